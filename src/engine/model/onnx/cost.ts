import { OnnxLimitError } from './errors.js';
import type { Step } from './plan.js';

/**
 * FLOPs of one image through a planned ONNX model, counted as the layers and graph budgets count
 * them: a multiply-add is 2 (convolutions, matrix products), a pooling window one per element it
 * reads, reshapes nothing, and any other step 4 per output element.
 */

const ELEMENTWISE_FLOPS = 4;

const perExample = (shape: readonly number[]) => shape.slice(1).reduce((a, b) => a * b, 1);

export function stepFlops(step: Step): number {
  const out = perExample(step.output.shape);
  switch (step.op) {
    case 'conv': {
      // Each output element reads (input channels / groups) x kh x kw inputs: the filter's size over
      // its output channels, whichever layout the filter is held in.
      const filter = step.weights[0];
      const outChannels = step.output.shape[1];
      return 2 * out * (filter ? filter.values.length / outChannels : 1);
    }
    case 'matMul':
      return 2 * out * (step.inputs[0]?.shape.at(-1) ?? 1);
    case 'pool':
      return out * step.size[0] * step.size[1];
    case 'globalAverage':
      return perExample(step.inputs[0]?.shape ?? []);
    case 'reshape':
      return 0;
    default:
      return ELEMENTWISE_FLOPS * out;
  }
}

/**
 * FLOPs of one image through `steps`; throws `OnnxLimitError` naming the node where the running
 * total crosses `maximum`.
 */
export function checkFlops(steps: readonly Step[], maximum: number): number {
  let total = 0;
  for (const step of steps) {
    total += stepFlops(step);
    if (total > maximum) {
      throw new OnnxLimitError(
        'flops',
        total,
        maximum,
        `node '${step.node}': one image up to here`,
        step.node,
      );
    }
  }
  return total;
}
