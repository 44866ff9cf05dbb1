"""The seed's small models (document 002): a VGG-like stack and an inception "tree", plus a
residual variant and the seed's other two kinds, DenseNet ("dense") and MobileNet ("mobile").

All take 28x28x1 digits and end in 10 classes. Widths are parameters so benchmarks can test
variants (other widths, an extra block).
"""

import keras

L = keras.layers


def conv_bn_relu(x, filters: int, kernel: int = 3, name: str | None = None):
    """Conv (no bias) + BatchNormalization + ReLU, as Keras' InceptionV3 builds its convs."""
    x = L.Conv2D(filters, kernel, padding="same", use_bias=False,
                 name=None if name is None else f"{name}_conv")(x)
    x = L.BatchNormalization(name=None if name is None else f"{name}_bn")(x)
    return L.ReLU(name=None if name is None else f"{name}_relu")(x)


def vgg_like(width: int = 32, dense: int = 128, classes: int = 10, blocks: int = 2
             ) -> keras.Model:
    """`blocks` x (2 conv+BN+ReLU, max-pool), widths doubling, Dense+BN+Dropout,
    Dense(classes): 4 convs and ~470k params at the defaults, as in the seed."""
    x = inp = keras.Input((28, 28, 1), name="image")
    for block in range(blocks):
        filters = width * 2 ** block
        x = conv_bn_relu(x, filters, name=f"b{block}a")
        x = conv_bn_relu(x, filters, name=f"b{block}b")
        x = L.MaxPooling2D(2, name=f"b{block}_pool")(x)
    x = L.Flatten()(x)
    x = L.Dense(dense, name="fc1")(x)
    x = L.BatchNormalization(name="fc1_bn")(x)
    x = L.ReLU(name="fc1_relu")(x)
    x = L.Dropout(0.3)(x)
    return keras.Model(inp, L.Dense(classes, activation="softmax", name="predictions")(x),
                       name="vgg_like")


def inception_block(x, widths: tuple[int, int, int, int], name: str):
    """Four branches (1x1 | 1x1-3x3 | 1x1-3x3-3x3 | avgpool-1x1) meeting in a Concatenate."""
    w1, w2, w3, w4 = widths
    b1 = conv_bn_relu(x, w1, 1, f"{name}_b1")
    b2 = conv_bn_relu(conv_bn_relu(x, w2 * 3 // 4, 1, f"{name}_b2a"), w2, 3, f"{name}_b2b")
    b3 = conv_bn_relu(x, w3 // 2, 1, f"{name}_b3a")
    b3 = conv_bn_relu(conv_bn_relu(b3, w3, 3, f"{name}_b3b"), w3, 3, f"{name}_b3c")
    b4 = L.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_b4_pool")(x)
    b4 = conv_bn_relu(b4, w4, 1, f"{name}_b4")
    return L.Concatenate(name=f"{name}_concat")([b1, b2, b3, b4])


def classifier(inp, x, dense: int, classes: int, name: str) -> keras.Model:
    """Flatten, Dense(dense, relu), Dropout, Dense(classes, softmax): the seed's tree head."""
    x = L.Flatten()(x)
    x = L.Dense(dense, activation="relu", name="fc1")(x)
    x = L.Dropout(0.3)(x)
    return keras.Model(inp, L.Dense(classes, activation="softmax", name="predictions")(x),
                       name=name)


def tree(width: int = 32, dense: int = 256, classes: int = 10, blocks: int = 2) -> keras.Model:
    """Stem, `blocks` inception blocks with max-pools between, Dense classifier: ~300k params."""
    x = inp = keras.Input((28, 28, 1), name="image")
    x = conv_bn_relu(x, width, 3, "stem")
    x = L.MaxPooling2D(2, name="stem_pool")(x)
    for i in range(blocks):
        x = inception_block(x, (width, width, 3 * width // 4, 3 * width // 4), f"mixed{i}")
        if i < blocks - 1 or x.shape[1] > 4:
            x = L.MaxPooling2D(2, name=f"mixed{i}_pool")(x)
    return classifier(inp, x, dense, classes, "tree")


def residual(width: int = 32, dense: int = 128, classes: int = 10, blocks: int = 2
             ) -> keras.Model:
    """Stem, `blocks` residual blocks (conv-BN-ReLU, conv-BN, + input, ReLU) with max-pools
    between, Dense classifier: a variant the seed does not have, to show the flow generalises."""
    x = inp = keras.Input((28, 28, 1), name="image")
    x = conv_bn_relu(x, width, 3, "stem")
    for i in range(blocks):
        h = conv_bn_relu(x, width, 3, f"res{i}a")
        h = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"res{i}b_conv")(h)
        h = L.BatchNormalization(name=f"res{i}b_bn")(h)
        x = L.ReLU(name=f"res{i}_relu")(L.Add(name=f"res{i}_add")([x, h]))
        if x.shape[1] > 4:
            x = L.MaxPooling2D(2, name=f"res{i}_pool")(x)
    return classifier(inp, x, dense, classes, "residual")


def dense_layer(x, growth: int, name: str):
    """DenseNet-BC layer: BN-ReLU-conv1x1 (4 x growth) -BN-ReLU-conv3x3 (growth), its output
    concatenated to its input, as Keras' DenseNet builds its conv_block."""
    h = L.BatchNormalization(name=f"{name}_0_bn")(x)
    h = L.ReLU(name=f"{name}_0_relu")(h)
    h = L.Conv2D(4 * growth, 1, use_bias=False, name=f"{name}_1_conv")(h)
    h = L.BatchNormalization(name=f"{name}_1_bn")(h)
    h = L.ReLU(name=f"{name}_1_relu")(h)
    h = L.Conv2D(growth, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(h)
    return L.Concatenate(name=f"{name}_concat")([x, h])


def dense(width: int = 12, dense: int = 64, classes: int = 10, blocks: int = 2,
          layers: int = 4) -> keras.Model:
    """DenseNet-BC: stem conv (2 x growth) + max-pool, `blocks` dense blocks of `layers` layers
    (growth rate `width`, each reading the growing Concatenate), a transition (BN-ReLU-conv1x1
    halving the channels, 2x2 average pool) between blocks, BN-ReLU, global average pool and
    the tree's Dense classifier: ~70k params at the defaults."""
    x = inp = keras.Input((28, 28, 1), name="image")
    x = L.Conv2D(2 * width, 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = L.MaxPooling2D(2, name="stem_pool")(x)
    for block in range(blocks):
        for i in range(layers):
            x = dense_layer(x, width, f"conv{block}_block{i}")
        if block < blocks - 1:
            x = L.BatchNormalization(name=f"pool{block}_bn")(x)
            x = L.ReLU(name=f"pool{block}_relu")(x)
            x = L.Conv2D(x.shape[-1] // 2, 1, use_bias=False, name=f"pool{block}_conv")(x)
            x = L.AveragePooling2D(2, name=f"pool{block}_pool")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    return classifier(inp, x, dense, classes, "dense")


def inverted_residual(x, filters: int, stride: int, expansion: int, name: str):
    """MobileNetV2 block: 1x1 expand conv-BN-ReLU6, depthwise 3x3-BN-ReLU6, 1x1 project
    conv-BN (linear), + input when the shapes match."""
    h = L.Conv2D(expansion * x.shape[-1], 1, use_bias=False, name=f"{name}_expand")(x)
    h = L.BatchNormalization(name=f"{name}_expand_bn")(h)
    h = L.ReLU(6.0, name=f"{name}_expand_relu")(h)
    h = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                          name=f"{name}_depthwise")(h)
    h = L.BatchNormalization(name=f"{name}_depthwise_bn")(h)
    h = L.ReLU(6.0, name=f"{name}_depthwise_relu")(h)
    h = L.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(h)
    h = L.BatchNormalization(name=f"{name}_project_bn")(h)
    if stride == 1 and x.shape[-1] == filters:
        h = L.Add(name=f"{name}_add")([x, h])
    return h


def mobile(width: int = 16, dense: int = 64, classes: int = 10, blocks: int = 2,
           expansion: int = 6) -> keras.Model:
    """MobileNetV2-style: stem conv 3x3 stride 2 (`width`) -BN-ReLU6, then `blocks` stages of
    two inverted residual blocks (the first strided, doubling the channels; the second with a
    residual Add), global average pool and the tree's Dense classifier: ~105k params at the
    defaults (expansion 5: ~88k)."""
    x = inp = keras.Input((28, 28, 1), name="image")
    x = L.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    for block in range(blocks):
        filters = width * 2 ** (block + 1)
        x = inverted_residual(x, filters, 2, expansion, f"block{block}a")
        x = inverted_residual(x, filters, 1, expansion, f"block{block}b")
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    return classifier(inp, x, dense, classes, "mobile")
