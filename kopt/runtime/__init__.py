"""The runtime room: conversion and export (TFLite float/float16/int8, ONNX), the LiteRT
runner, the per-layer timing report, the latency model, the per-layer int8 error report and the
clock. Imports the rooms below it (errors, ir, keras_io, rewriting's verification) and never the
flows.
"""

from kopt.runtime.clock import median_ms
from kopt.runtime.convert import (
    ExportResult,
    convert_tflite,
    export_onnx,
    export_tflite,
    int8_layer_errors,
)
from kopt.runtime.int8_error import Int8ErrorReport
from kopt.runtime.latency import LatencyModel, predict_latency
from kopt.runtime.litert import LiteRTRunner
from kopt.runtime.timing import compare_reports, timing_report

__all__ = ["ExportResult", "Int8ErrorReport", "LatencyModel", "LiteRTRunner", "compare_reports",
           "convert_tflite", "export_onnx", "export_tflite", "int8_layer_errors", "median_ms",
           "predict_latency", "timing_report"]
