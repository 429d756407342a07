"""Training side of sensor-streamer: the torch step model, its training and its ONNX export.

Needs the `train` extra (torch, onnx, onnxscript). The daemon package `streamer` never
imports anything from here.
"""
