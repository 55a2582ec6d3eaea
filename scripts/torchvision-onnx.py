#!/usr/bin/python3
"""Exports a torchvision classifier to ONNX the way a user would, with PyTorch's reference outputs on
fixed inputs, for the importer's checks (test/engine/model/onnx/torchvision.test.ts, the full list in
bench/torchvision.ts) and bench/onnx.ts. Needs Debian's python3-torch and python3-torchvision.

    /usr/bin/python3 scripts/torchvision-onnx.py --model resnet50 --out DIR [--size 224] [--classes 1000]
        [--batch 2] [--seed 0] [--no-reference]
    /usr/bin/python3 scripts/torchvision-onnx.py --list          # torchvision.models' classifiers
    /usr/bin/python3 scripts/torchvision-onnx.py --list-small    # the small configurations (tests)

The model is built with random weights (torch.manual_seed(seed)), BatchNorm statistics measured on
random images and then perturbed (every layer's activations of order 1, as in a trained network;
statistics drawn independently of the activations let a deep net's signal fall below float32's
resolution: googlenet's float32 gradient was then mostly rounding noise), the last layer rescaled so that logits are of order 1, then put in eval mode and exported
with `torch.onnx.export(model, x, DIR/model.onnx, opset_version=17, input_names=['input'],
dynamic_axes={'input': {0: 'batch'}})`; over 2 GB PyTorch writes the weights as external data files
beside model.onnx. DIR also gets input.npy (NCHW float32 in [0, 1]), labels.npy (int64), logits.npy,
probabilities.npy, input_grad.npy (d sum_i CE(logits_i, label_i) / d input), input_grad_float64.npy
(the same gradient computed in float64, stored as float32), probabilities_float64.npy (the model's
probabilities in float64: how far float32 rounding moves PyTorch's own) and torch.json (how the model was built,
and `reference_spread`: per image, max |float32 gradient - float64 gradient| / max |float64
gradient|). The spread is how far PyTorch's float32 reference is from the exact gradient: where a
ReLU input or two max-pool candidates lie within float32 rounding of each other, any float32
implementation may take the other side (docs/onnx.md), so an importer's gradient is checked
against both files.

A size torchvision itself refuses (a model that does not run at 32x32) prints a JSON line
{"refused_by_torchvision": "..."} and exits with status 3.
"""
import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.models as models


def small_models():
    """Small configurations of torchvision's own classes (the code paths of the full models, at a
    fraction of the weights), for tests that must stay fast."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    from torchvision.models.maxvit import MaxVit
    from torchvision.models.regnet import BlockParams, RegNet
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.models.swin_transformer import (
        SwinTransformer,
        SwinTransformerBlockV2,
        PatchMergingV2,
    )
    from torchvision.models.vision_transformer import VisionTransformer

    return {
        'small_vit': lambda c, s: VisionTransformer(
            image_size=s, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=c
        ),
        'small_swin': lambda c, s: SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
            num_classes=c,
        ),
        'small_swin_v2': lambda c, s: SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
            block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2, num_classes=c,
        ),
        'small_convnext': lambda c, s: ConvNeXt(
            [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=c
        ),
        'small_maxvit': lambda c, s: MaxVit(
            input_size=(s, s), stem_channels=8, partition_size=2, block_channels=[16, 32],
            block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=c,
        ),
        'small_regnet': lambda c, s: RegNet(
            BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25),
            num_classes=c,
        ),
        'small_resnext': lambda c, s: ResNet(Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4, num_classes=c),
    }


SMALL = small_models()


def classifier_names():
    return [name for name in models.list_models(models) if name in dir(models)]


def build(name, classes, size):
    if name in SMALL:
        return SMALL[name](classes, size)
    kwargs = {'weights': None, 'num_classes': classes}
    if name.startswith('vit_'):
        kwargs['image_size'] = size
    if name == 'maxvit_t':
        kwargs['input_size'] = (size, size)
    if name in ('googlenet', 'inception_v3'):
        kwargs['init_weights'] = True
    return models.get_model(name, **kwargs)


def calibrate_batchnorm(model, generator, size, images=4):
    """Running statistics measured on random images (train-mode forward, cumulative average), then
    moved away from them and the affine parameters away from (1, 0), so that folding them is tested."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(images, 3, size, size, generator=generator))
    for m in norms:
        c = m.num_features
        with torch.no_grad():
            m.running_mean.add_(torch.randn(c, generator=generator) * 0.1 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(c, generator=generator) * 0.5 + 0.75)
            m.weight.copy_(torch.rand(c, generator=generator) * 0.4 + 0.8)
            m.bias.copy_(torch.randn(c, generator=generator) * 0.05)


def last_layer(model):
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1]


def scale_logits(model, x, target_std=2.0):
    """Rescales the last layer so that logits have standard deviation ~2 (probabilities far from uniform)."""
    last = last_layer(model)
    with torch.no_grad():
        if not last.weight.any():
            # Zero-initialised heads (ViT's) would make every input gradient zero.
            nn.init.normal_(last.weight, std=0.02)
        std = model(x).std().item()
        if std > 0:
            last.weight.mul_(target_std / std)
            if last.bias is not None:
                last.bias.mul_(target_std / std)


class RefusedByTorchvision(Exception):
    """torchvision's own refusal of a configuration (a model that does not run at this size)."""


def prepare(name, classes, size, batch, seed):
    """The model (eval mode, weights frozen), a batch of images in [0, 1] and labels, all from `seed`:
    the same call gives the same model and batch in any process (bench/onnx.ts's PyTorch peer rebuilds
    what this script exported)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    try:
        model = build(name, classes, size)
        calibrate_batchnorm(model, generator, size)
        model.eval()
        model.requires_grad_(False)
        scale_logits(model, x)
    except Exception as error:
        raise RefusedByTorchvision(str(error).split('\n')[0]) from error
    return model, x, labels


def export(model, x, path):
    """The export a user would write: opset 17, the batch dimension dynamic."""
    # nn.MultiheadAttention (the vision transformers) takes its inference fast path, which torch 1.13
    # cannot export, when no weight requires grad: the weights require it while the export traces.
    frozen = [t for t in model.parameters() if not t.requires_grad]
    for t in frozen:
        t.requires_grad_(True)
    try:
        torch.onnx.export(
            model,
            x[:1],
            path,
            opset_version=17,
            input_names=['input'],
            output_names=['logits'],
            dynamic_axes={'input': {0: 'batch'}},
        )
    finally:
        for t in frozen:
            t.requires_grad_(False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--model')
    p.add_argument('--out')
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--classes', type=int, default=1000)
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=0)
    p.add_argument('--no-reference', action='store_true')
    p.add_argument('--no-float64', action='store_true', help='skip the float64 gradient (large models)')
    p.add_argument('--list', action='store_true')
    p.add_argument('--list-small', action='store_true')
    a = p.parse_args()
    if a.list:
        print('\n'.join(classifier_names()))
        return
    if a.list_small:
        print('\n'.join(SMALL))
        return
    if not a.model or not a.out:
        p.error('--model and --out are required')
    if a.model not in SMALL and a.model not in classifier_names():
        p.error(f"unknown model '{a.model}'")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    started = time.time()
    try:
        model, x, labels = prepare(a.model, a.classes, a.size, a.batch, a.seed)
    except RefusedByTorchvision as error:
        print(json.dumps({'model': a.model, 'size': a.size, 'refused_by_torchvision': str(error)}))
        sys.exit(3)
    os.makedirs(a.out, exist_ok=True)
    export(model, x, os.path.join(a.out, 'model.onnx'))
    exported = time.time() - started
    info = {
        'model': a.model,
        'size': a.size,
        'classes': a.classes,
        'seed': a.seed,
        'batch': a.batch,
        'parameters': sum(t.numel() for t in model.parameters()),
        'torch': torch.__version__,
        'torchvision': torchvision.__version__,
        'export_seconds': round(exported, 1),
        'batchnorm': 'calibrated',
    }
    if not a.no_reference:
        x.requires_grad_(True)
        logits = model(x)
        loss = F.cross_entropy(logits.double(), labels, reduction='sum')
        (grad,) = torch.autograd.grad(loss, x)
        save = lambda file, array: np.save(os.path.join(a.out, file), np.ascontiguousarray(array))
        save('input.npy', x.detach().numpy().astype(np.float32))
        save('labels.npy', labels.numpy().astype(np.int64))
        save('logits.npy', logits.detach().numpy().astype(np.float32))
        save('probabilities.npy', torch.softmax(logits.detach().double(), 1).numpy().astype(np.float32))
        save('input_grad.npy', grad.numpy().astype(np.float32))
        info['logits_std'] = round(logits.std().item(), 4)
        if not a.no_float64:
            exact = copy.deepcopy(model).double()
            x64 = x.detach().double().requires_grad_(True)
            logits64 = exact(x64)
            (grad64,) = torch.autograd.grad(F.cross_entropy(logits64, labels, reduction='sum'), x64)
            save('input_grad_float64.npy', grad64.numpy().astype(np.float32))
            save('probabilities_float64.npy', torch.softmax(logits64.detach(), 1).numpy())
            scale = grad64.abs().max().item()
            info['reference_spread'] = [
                float('%.3g' % ((grad[i].double() - grad64[i]).abs().max().item() / scale)) for i in range(a.batch)
            ]
    with open(os.path.join(a.out, 'torch.json'), 'w') as f:
        json.dump(info, f)
    print(json.dumps(info))


if __name__ == '__main__':
    main()
