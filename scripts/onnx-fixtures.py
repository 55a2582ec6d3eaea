#!/usr/bin/python3
"""Exports the ONNX import fixtures: small PyTorch CNNs of the families people audit, with random
weights and non-trivial BatchNorm statistics, plus PyTorch's logits and cross-entropy input
gradients on fixed inputs. CI reads the committed files; only regenerating them needs PyTorch
(Debian: apt-get install -y --no-install-recommends python3-torch).

    /usr/bin/python3 scripts/onnx-fixtures.py [out_dir]   # default test/fixtures/onnx

Each fixture <name>/ holds model.onnx, input.npy (NCHW float32 in [0,1]), labels.npy (int64),
logits.npy and input_grad.npy (d sum_i CE(logits_i, label_i) / d input, NCHW float32).
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel normalisation inside the model: Sub and Div by [1, 3, 1, 1] constants."""

    def __init__(self):
        super().__init__()
        self.register_buffer('mean', torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class NormalizeByInverse(nn.Module):
    """src/engine/model/normalization-layer.ts exactly: (x - mean) * (1 / std), 1 / std rounded from double
    to float32 as tfjs does, so that the import and the native model compute the same bits."""

    def __init__(self):
        super().__init__()
        self.register_buffer('mean', torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        inverse = torch.tensor([1.0 / s for s in CIFAR10_STD], dtype=torch.float64).float()
        self.register_buffer('inverse_std', inverse.view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) * self.inverse_std


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet (He et al. 2016), the RATIO/RobustBench family, narrowed."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.layer1 = PreActBlock(8, 8, 1)
        self.layer2 = PreActBlock(8, 16, 2)
        self.bn = nn.BatchNorm2d(16)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        return self.linear(out)


class WideBlock(nn.Module):
    """Wide pre-activation block; stride 2 pads asymmetrically (TF 'same'), as some ports do."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 0 if stride == 2 else 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.drop = nn.Dropout(0.3)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout or stride != 1 else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        if self.stride == 2:
            out = F.pad(out, (0, 1, 0, 1))
        out = self.conv1(out)
        out = self.conv2(self.drop(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.block1 = WideBlock(8, 16, 1)
        self.block2 = WideBlock(16, 24, 2)
        self.bn = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        out = self.block2(self.block1(self.conv1(self.normalize(x))))
        out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 16)
        out = out.view(out.size(0), -1)
        return self.fc(out)


class DepthwiseNet(nn.Module):
    """MobileNet-like: depthwise + pointwise convs, ReLU6 (Clip), SiLU (Sigmoid * Mul), LeakyReLU,
    Tanh, an average pool with padding, a channel Concat and Flatten."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, 2, 1)
        self.bn0 = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, 1, 1, groups=12, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.pw = nn.Conv2d(12, 16, 1)
        self.dw2 = nn.Conv2d(16, 32, 3, 2, 1, groups=16)
        self.branch = nn.Conv2d(16, 8, 1, 2, bias=False)
        self.pool = nn.AvgPool2d(3, 2, 1)
        self.fc = nn.Linear(40 * 4 * 4, 10)

    def forward(self, x):
        x = x * 2.0 - 1.0
        out = F.relu6(self.bn0(self.stem(x)))
        out = F.silu(self.bn1(self.dw(out)))
        out = F.leaky_relu(self.pw(out), 0.1)
        a = torch.tanh(self.dw2(out))
        b = torch.sigmoid(self.branch(out))
        out = torch.cat([a, b], 1)
        out = self.pool(out)
        out = torch.flatten(out, 1)
        return self.fc(out)


class MaxPoolNet(nn.Module):
    """Plain CNN with MaxPool (one padded) and view(x.size(0), -1) flattening of a 32 x 4 x 4 map."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 5, 1, 2)
        self.conv2 = nn.Conv2d(16, 32, 3, 1, 1)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.max_pool2d(F.relu(self.conv2(out)), 3, 2, 1)
        out = F.max_pool2d(out, 2)
        out = out.view(out.size(0), -1)
        out = self.drop(F.relu(self.fc1(out)))
        return self.fc2(out)


class TiesNet(nn.Module):
    """Gradients at PyTorch's non-differentiable points, on an input quantised to quarters: max-pool
    windows (padded, and ceil mode) holding equal maxima send the gradient to the first one in
    row-major order, and a ReLU whose input is exactly 0 passes none."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 8, 3, 1, 1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        padded = F.max_pool2d(x, 3, 2, 1)
        ceil = F.max_pool2d(x, 3, 2, ceil_mode=True)
        out = F.relu(torch.cat([padded, ceil], 1) - 0.5)
        out = F.max_pool2d(F.relu(self.conv(out)), 2)
        return self.fc(torch.flatten(out, 1))


class SmallCnn(nn.Module):
    """src/training/architectures.ts smallCnn (width 0.5): the same network in PyTorch, so that an
    import can be compared with the native TF.js build holding the same weights."""

    def __init__(self, width=0.5):
        super().__init__()
        c = [max(1, round(b * width)) for b in (32, 32, 64, 64, 128)]
        self.normalize = NormalizeByInverse()
        self.conv1 = nn.Conv2d(3, c[0], 3, 1, 1)
        self.conv2 = nn.Conv2d(c[0], c[1], 3, 1, 1)
        self.conv3 = nn.Conv2d(c[1], c[2], 3, 1, 1)
        self.conv4 = nn.Conv2d(c[2], c[3], 3, 1, 1)
        self.conv5 = nn.Conv2d(c[3], c[4], 3, 1, 1)
        self.fc = nn.Linear(c[4], 10)

    def forward(self, x):
        x = self.normalize(x)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv5(x))
        x = F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return self.fc(x)


def randomize_batchnorm(model, generator):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)


def scale_logits(model, generator, target_std=2.0):
    """Rescales the last Linear layer so that logits are of order 1 (tolerances are absolute)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        std = model(torch.rand(16, 3, 32, 32, generator=generator)).std().item()
        last.weight.mul_(target_std / std)
        last.bias.mul_(target_std / std)


def save_npy(path, array):
    np.save(path, np.ascontiguousarray(array))


def export(name, model, out_dir, batch=3, opset=17, seed=0, levels=None):
    """`levels`: round the input to multiples of 1 / levels (ties in pooling windows, zeros in ReLUs)."""
    generator = torch.Generator().manual_seed(seed)
    randomize_batchnorm(model, generator)
    model.eval()
    scale_logits(model, generator)
    directory = os.path.join(out_dir, name)
    os.makedirs(directory, exist_ok=True)
    torch.onnx.export(
        model,
        torch.rand(1, 3, 32, 32, generator=generator),
        os.path.join(directory, 'model.onnx'),
        opset_version=opset,
        input_names=['input'],
        output_names=['logits'],
        dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}},
    )
    x = torch.rand(batch, 3, 32, 32, generator=generator)
    if levels is not None:
        x = torch.round(x * levels) / levels
    x.requires_grad_(True)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    logits = model(x)
    loss = F.cross_entropy(logits.double(), labels, reduction='sum')
    (grad,) = torch.autograd.grad(loss, x)
    save_npy(os.path.join(directory, 'input.npy'), x.detach().numpy().astype(np.float32))
    save_npy(os.path.join(directory, 'labels.npy'), labels.numpy().astype(np.int64))
    save_npy(os.path.join(directory, 'logits.npy'), logits.detach().numpy().astype(np.float32))
    save_npy(os.path.join(directory, 'input_grad.npy'), grad.numpy().astype(np.float32))
    size = os.path.getsize(os.path.join(directory, 'model.onnx'))
    assert size < 1_000_000, f'{name}: model.onnx is {size} bytes, over 1 MB'
    print(f'{name}: {size} bytes, opset {opset}, logits std {logits.std().item():.3f}')


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join('test', 'fixtures', 'onnx')
    torch.manual_seed(0)
    export('preact-resnet', PreActResNet(), out_dir, seed=1)
    export('wide-resnet', WideResNet(), out_dir, seed=2, opset=13)
    export('depthwise', DepthwiseNet(), out_dir, seed=3, opset=11)
    export('maxpool-view', MaxPoolNet(), out_dir, seed=4, opset=17)
    export('small-cnn', SmallCnn(), out_dir, seed=5, opset=17)
    export('ties', TiesNet(), out_dir, seed=6, opset=17, levels=4)


if __name__ == '__main__':
    main()
