"""``nn.RNN`` for the dynamo ONNX exporter: ``aten::rnn_tanh`` / ``aten::rnn_relu`` as ONNX's
``RNN`` op, so the sequence length stays dynamic.

torch.onnx's function library translates ``aten::lstm`` and ``aten::gru`` to ONNX ops but
not the plain RNN, which the exporter then decomposes into a Python loop unrolled at the
example's length: an RNN language model exported at length 8 returned 8 steps for an input
of 11 (the uncompiled model as well). Handed to ``torch.onnx.export`` as
``custom_translation_table`` (``TABLE``); needs onnxscript, part of the extra vgpcompile[onnx] (export
checks for it first).
"""

from __future__ import annotations

import torch
from onnxscript import opset18 as op


def _layers(x, hx, params, has_biases: bool, num_layers: int, bidirectional: bool, batch_first: bool, act: str):
    """torch's flat parameter list (w_ih, w_hh[, b_ih, b_hh] per layer and direction) as one
    ONNX RNN per layer; returns (output, h_n) in torch's layouts."""
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    seq = op.Transpose(x, perm=[1, 0, 2]) if batch_first else x  # ONNX: [seq, batch, features]
    finals = []
    for layer in range(num_layers):
        first = [(layer * dirs + d) * per for d in range(dirs)]
        w = op.Concat(*[op.Unsqueeze(params[i], [0]) for i in first], axis=0)
        r = op.Concat(*[op.Unsqueeze(params[i + 1], [0]) for i in first], axis=0)
        h0 = op.Slice(hx, [layer * dirs], [(layer + 1) * dirs], [0])
        attrs = {
            "initial_h": h0,
            "activations": [act] * dirs,
            "direction": "bidirectional" if bidirectional else "forward",
            "hidden_size": hx.shape[2],
        }
        if has_biases:  # ONNX's B is [Wb, Rb] per direction
            b = op.Concat(*[op.Unsqueeze(op.Concat(params[i + 2], params[i + 3], axis=0), [0]) for i in first], axis=0)
            y, h_n = op.RNN(seq, w, r, b, **attrs)
        else:
            y, h_n = op.RNN(seq, w, r, **attrs)
        y = op.Transpose(y, perm=[0, 2, 1, 3])  # [seq, dirs, batch, hidden] -> [seq, batch, dirs, hidden]
        seq = op.Reshape(y, op.Concat(op.Shape(y, start=0, end=2), op.Constant(value_ints=[-1]), axis=0))
        finals.append(h_n)
    out = op.Transpose(seq, perm=[1, 0, 2]) if batch_first else seq
    return out, op.Concat(*finals, axis=0)


def rnn_tanh(input, hx, params, has_biases: bool, num_layers: int, dropout: float, train: bool,
             bidirectional: bool, batch_first: bool):  # fmt: skip
    """rnn_tanh.input(Tensor input, Tensor hx, Tensor[] params, bool has_biases, int num_layers,
    float dropout, bool train, bool bidirectional, bool batch_first) -> (Tensor, Tensor)"""
    return _layers(input, hx, params, has_biases, num_layers, bidirectional, batch_first, "Tanh")


def rnn_relu(input, hx, params, has_biases: bool, num_layers: int, dropout: float, train: bool,
             bidirectional: bool, batch_first: bool):  # fmt: skip
    """rnn_relu.input: as rnn_tanh, with ReLU."""
    return _layers(input, hx, params, has_biases, num_layers, bidirectional, batch_first, "Relu")


TABLE = {torch.ops.aten.rnn_tanh.input: rnn_tanh, torch.ops.aten.rnn_relu.input: rnn_relu}
