#!/usr/bin/python3
"""PyTorch's side of `npm run bench:onnx -- --torchvision NAME` (bench/onnx.ts): the model the ONNX file
was exported from, timed on the same batch, one operation per request, so that the bench alternates
rounds between the import and PyTorch. Needs Debian's python3-torch (and python3-torchvision for
--torchvision); run it with /usr/bin/python3.

    /usr/bin/python3 scripts/torch-onnx-peer.py --torchvision resnet50 --dir DIR [--export] [--size 224]
        [--batch 8] [--classes 1000] [--seed 0] [--threads N]
    /usr/bin/python3 scripts/torch-onnx-peer.py --torchscript model.pt --dir DIR [--size 224] [--batch 8]
        [--seed 0] [--threads N]

--torchvision builds the model as scripts/torchvision-onnx.py does (same seed: same weights and batch)
and, with --export, writes DIR/model.onnx as that script does. --torchscript loads a model saved with
torch.jit.save (any PyTorch model; the ONNX file is then the user's export of it). DIR gets input.npy
(NCHW float32 in [0, 1]), labels.npy (int32), logits.npy and input_grad.npy (d sum_i CE(logits_i,
label_i) / d input, float32 as timed), and logits_float64.npy and input_grad_float64.npy (the same
in float64: how far float32 rounding moves PyTorch's own values). Then one JSON line
{"ready": true, ...} on stdout, and for each line read from stdin, `forward` (logits without
autograd) or `gradient` (the input gradient above), one line {"ms": milliseconds}; end of input
ends it. Errors go to stderr, with exit status 2 (3 for a size torchvision refuses).
"""
import argparse
import copy
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def torchvision_onnx():
    """scripts/torchvision-onnx.py as a module (its file name is not an identifier)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torchvision-onnx.py')
    # No __pycache__ left in the working tree by a bench run.
    sys.dont_write_bytecode = True
    spec = importlib.util.spec_from_file_location('torchvision_onnx', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fail(message, status=2):
    print(message, file=sys.stderr)
    sys.exit(status)


def main():
    p = argparse.ArgumentParser()
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument('--torchvision', metavar='NAME')
    source.add_argument('--torchscript', metavar='FILE')
    p.add_argument('--dir', required=True)
    p.add_argument('--export', action='store_true')
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--classes', type=int, default=1000)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=0)
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    extra = {}
    if a.torchvision:
        tv = torchvision_onnx()
        if a.torchvision not in tv.SMALL and a.torchvision not in tv.classifier_names():
            fail(f"unknown torchvision model '{a.torchvision}' (scripts/torchvision-onnx.py --list)")
        try:
            model, x, labels = tv.prepare(a.torchvision, a.classes, a.size, a.batch, a.seed)
        except tv.RefusedByTorchvision as error:
            fail(f'torchvision refuses {a.torchvision} at {a.size}x{a.size}: {error}', 3)
        if a.export:
            started = time.time()
            tv.export(model, x, os.path.join(a.dir, 'model.onnx'))
            extra['export_seconds'] = round(time.time() - started, 1)
        extra['torchvision'] = tv.torchvision.__version__
    else:
        if a.export:
            fail('--export needs --torchvision (a TorchScript model is exported by its owner)')
        try:
            model = torch.jit.load(a.torchscript).eval()
        except Exception as error:
            fail(f"cannot load the TorchScript model '{a.torchscript}': {str(error).splitlines()[0]}")
        for parameter in model.parameters():  # a ScriptModule has no requires_grad_()
            parameter.requires_grad_(False)
        torch.manual_seed(a.seed)
        generator = torch.Generator().manual_seed(a.seed + 1)
        x = torch.rand(a.batch, 3, a.size, a.size, generator=generator)
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        labels = torch.randint(0, classes, (a.batch,), generator=generator)

    def forward():
        with torch.no_grad():
            return model(x)

    def gradient():
        inputs = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(inputs), labels, reduction='sum')
        (grad,) = torch.autograd.grad(loss, inputs)
        return grad

    save = lambda name, array: np.save(os.path.join(a.dir, name), np.ascontiguousarray(array))
    logits = forward()
    save('input.npy', x.numpy().astype(np.float32))
    save('labels.npy', labels.numpy().astype(np.int32))
    save('logits.npy', logits.numpy().astype(np.float32))
    save('input_grad.npy', gradient().numpy().astype(np.float32))
    try:
        # The same model in float64 (the exact values): how far float32 rounding alone moves PyTorch's.
        exact = copy.deepcopy(model).double()
        inputs = x.double().requires_grad_(True)
        logits64 = exact(inputs)
        (grad64,) = torch.autograd.grad(F.cross_entropy(logits64, labels, reduction='sum'), inputs)
        save('logits_float64.npy', logits64.detach().numpy())
        save('input_grad_float64.npy', grad64.numpy())
        del exact, inputs, logits64, grad64
    except Exception as error:  # a TorchScript model may not convert; the float32 comparison stands
        print(f'no float64 reference: {str(error).splitlines()[0]}', file=sys.stderr)
    ready = {
        'ready': True,
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'parameters': sum(t.numel() for t in model.parameters()),
        'classes': logits.shape[1],
        **extra,
    }
    print(json.dumps(ready), flush=True)
    operations = {'forward': forward, 'gradient': gradient}
    for line in sys.stdin:
        operation = operations.get(line.strip())
        if operation is None:
            fail(f"unknown request '{line.strip()}' (forward or gradient)")
        started = time.perf_counter()
        operation()
        print(json.dumps({'ms': (time.perf_counter() - started) * 1000}), flush=True)


if __name__ == '__main__':
    main()
