import onnxProto from 'onnx-proto';

/**
 * Writes small ONNX models for tests with the same schema the importer reads (onnx-proto), so that
 * refusals and single ops can be tested without PyTorch.
 */
const { onnx } = onnxProto;
export const DataType = onnx.TensorProto.DataType;

export interface NodeSpec {
  op: string;
  inputs: string[];
  outputs: string[];
  name?: string;
  domain?: string;
  attributes?: Record<string, number | number[] | string | { tensor: onnxProto.onnx.ITensorProto }>;
}

export interface ModelSpec {
  nodes: NodeSpec[];
  inputs?: Array<{ name: string; dims: Array<number | string>; elemType?: number }>;
  outputs?: Array<{ name: string; dims: Array<number | string> }>;
  initializers?: onnxProto.onnx.ITensorProto[];
  opset?: number;
}

export function floatTensor(
  name: string,
  dims: number[],
  values: ArrayLike<number>,
): onnxProto.onnx.ITensorProto {
  return { name, dims, dataType: DataType.FLOAT, floatData: Array.from(values) };
}

export function intTensor(name: string, dims: number[], values: number[]): onnxProto.onnx.ITensorProto {
  return { name, dims, dataType: DataType.INT64, int64Data: values };
}

function attribute(
  name: string,
  value: NonNullable<NodeSpec['attributes']>[string],
): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof value === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) return { name, type: T.INTS, ints: value };
  if (typeof value === 'number') {
    return Number.isInteger(value) ? { name, type: T.INT, i: value } : { name, type: T.FLOAT, f: value };
  }
  return { name, type: T.TENSOR, t: value.tensor };
}

function valueInfo(
  name: string,
  dims: Array<number | string>,
  elemType = DataType.FLOAT,
): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) },
      },
    },
  };
}

/** An encoded ModelProto: by default one NCHW input 'x' [n, 3, 4, 4] and one output 'y'. */
export function buildModel(spec: ModelSpec): Uint8Array {
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'ratio-audit tests',
    opsetImport: [{ domain: '', version: spec.opset ?? 17 }],
    graph: {
      name: 'test',
      node: spec.nodes.map((n, i) => ({
        name: n.name ?? `${n.op.toLowerCase()}_${i}`,
        opType: n.op,
        domain: n.domain ?? '',
        input: n.inputs,
        output: n.outputs,
        attribute: Object.entries(n.attributes ?? {}).map(([k, v]) => attribute(k, v)),
      })),
      initializer: spec.initializers ?? [],
      input: (spec.inputs ?? [{ name: 'x', dims: ['n', 3, 4, 4] }]).map((i) =>
        valueInfo(i.name, i.dims, i.elemType),
      ),
      output: (spec.outputs ?? [{ name: 'y', dims: ['n', 2] }]).map((o) => valueInfo(o.name, o.dims)),
    },
  });
  return onnx.ModelProto.encode(model).finish();
}

/** x [n,3,4,4] -> ... -> GlobalAveragePool -> Flatten -> Gemm(2): the classifier tail for node tests. */
export function withHead(
  nodes: NodeSpec[],
  last: string,
  channels = 3,
): { nodes: NodeSpec[]; initializers: onnxProto.onnx.ITensorProto[] } {
  return {
    nodes: [
      ...nodes,
      { op: 'GlobalAveragePool', inputs: [last], outputs: ['pooled'] },
      { op: 'Flatten', inputs: ['pooled'], outputs: ['flat'] },
      { op: 'Gemm', inputs: ['flat', 'head_w', 'head_b'], outputs: ['y'], attributes: { transB: 1 } },
    ],
    initializers: [
      floatTensor(
        'head_w',
        [2, channels],
        Array.from({ length: 2 * channels }, (_, i) => (i % 3) - 1),
      ),
      floatTensor('head_b', [2], [0.5, -0.5]),
    ],
  };
}
