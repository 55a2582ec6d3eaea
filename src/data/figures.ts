import sharp, { type OverlayOptions } from 'sharp';

/**
 * Figures for `ratio eval`: the counterfactual grid (PNG, Figures 2-4 of the RATIO paper) and
 * the confidence-versus-radius curves (SVG, Figure 5). Inputs are plain pixel arrays, so this
 * module knows nothing of tensors.
 */

/** One image, HWC row-major, values in [0,1] (float) or 0..255 (uint8). */
export interface PixelImage {
  data: Float32Array | Uint8Array;
  height: number;
  width: number;
  channels: 1 | 3;
}

export interface GridCell {
  image: PixelImage;
  /** Up to two short caption lines, e.g. "p_t 0.93" and "p_o 0.02". */
  caption: string[];
}

export interface GridRow {
  /** Caption lines under the original image, e.g. "cat -> dog". */
  label: string[];
  original: PixelImage;
  cells: GridCell[];
}

export interface GridOptions {
  /** Column titles for the cells, e.g. "eps 0.5"; the first column is titled "original". */
  columnTitles: string[];
  /** Pixel upscaling factor (nearest neighbour, so single pixels stay visible). */
  scale?: number;
}

export interface CurveSeries {
  name: string;
  values: number[];
  color?: string;
}

export interface CurveChart {
  title: string;
  xLabel: string;
  yLabel: string;
  x: number[];
  series: CurveSeries[];
  /** y-axis range; defaults to [0, 1] (confidences). */
  yRange?: [number, number];
}

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#17becf'];

export function escapeXml(text: string): string {
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;');
}

function toRgbBytes(image: PixelImage): Buffer {
  const { data, height, width, channels } = image;
  if (data.length !== height * width * channels) {
    throw new Error(
      `'image.data' must hold ${height}x${width}x${channels} = ${height * width * channels} values, got ${data.length}`,
    );
  }
  const out = Buffer.alloc(height * width * 3);
  const isFloat = data instanceof Float32Array;
  for (let p = 0; p < height * width; p++) {
    for (let c = 0; c < 3; c++) {
      const value = data[p * channels + (channels === 1 ? 0 : c)];
      out[p * 3 + c] = isFloat ? Math.round(Math.min(1, Math.max(0, value)) * 255) : value;
    }
  }
  return out;
}

async function upscaledPng(image: PixelImage, scale: number): Promise<Buffer> {
  return sharp(toRgbBytes(image), { raw: { width: image.width, height: image.height, channels: 3 } })
    .resize(image.width * scale, image.height * scale, { kernel: 'nearest' })
    .png()
    .toBuffer();
}

/**
 * Renders the counterfactual grid: one row per image, the original in the first column, then one
 * column per radius, each with its caption lines underneath. Text is drawn as one SVG overlay
 * (librsvg inside sharp), so no font files are shipped.
 */
export async function renderCounterfactualGrid(rows: GridRow[], options: GridOptions): Promise<Buffer> {
  if (rows.length === 0) throw new Error("'rows' must not be empty");
  const scale = options.scale ?? 3;
  const first = rows[0].original;
  const cellWidth = Math.max(first.width * scale, 84);
  const imageHeight = first.height * scale;
  const captionHeight = 30;
  const headerHeight = 22;
  const padding = 6;
  const columns = 1 + options.columnTitles.length;
  const rowHeight = imageHeight + captionHeight + padding;
  const width = padding + columns * (cellWidth + padding);
  const height = headerHeight + rows.length * rowHeight + padding;

  const composites: OverlayOptions[] = [];
  const texts: string[] = [];
  const text = (x: number, y: number, content: string, size: number, weight = 'normal') =>
    texts.push(
      `<text x="${x}" y="${y}" font-family="DejaVu Sans, sans-serif" font-size="${size}" font-weight="${weight}" text-anchor="middle">${escapeXml(content)}</text>`,
    );
  const columnLeft = (column: number) => padding + column * (cellWidth + padding);
  ['original', ...options.columnTitles].forEach((title, column) => {
    text(columnLeft(column) + cellWidth / 2, 15, title, 12, 'bold');
  });
  for (let r = 0; r < rows.length; r++) {
    const row = rows[r];
    if (row.cells.length !== options.columnTitles.length) {
      throw new Error(
        `'rows[${r}].cells' must have one cell per column title (${options.columnTitles.length}), got ${row.cells.length}`,
      );
    }
    const top = headerHeight + r * rowHeight;
    const entries: { image: PixelImage; caption: string[] }[] = [
      { image: row.original, caption: row.label },
      ...row.cells,
    ];
    for (let column = 0; column < entries.length; column++) {
      const { image, caption } = entries[column];
      if (image.height !== first.height || image.width !== first.width) {
        throw new Error(
          `every grid image must be ${first.height}x${first.width}, rows[${r}] column ${column} is ${image.height}x${image.width}`,
        );
      }
      const left = columnLeft(column) + Math.floor((cellWidth - image.width * scale) / 2);
      composites.push({ input: await upscaledPng(image, scale), left, top });
      caption.slice(0, 2).forEach((line, i) => {
        text(columnLeft(column) + cellWidth / 2, top + imageHeight + 12 + i * 13, line, 11);
      });
    }
  }
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">${texts.join('')}</svg>`;
  composites.push({ input: Buffer.from(svg), left: 0, top: 0 });
  // The SVG overlay brings an alpha channel; flatten it away so the PNG is plain RGB.
  const composed = await sharp({
    create: { width, height, channels: 3, background: { r: 255, g: 255, b: 255 } },
  })
    .composite(composites)
    .png()
    .toBuffer();
  return sharp(composed).removeAlpha().png().toBuffer();
}

function niceTicks(min: number, max: number, count: number): number[] {
  const span = max - min;
  if (!(span > 0)) return [min];
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step)
    ticks.push(Number(v.toFixed(10)));
  return ticks;
}

/** A line chart as a standalone SVG string: axes, ticks, grid, one polyline with markers per series, legend. */
export function renderCurveChartSvg(chart: CurveChart): string {
  const { x, series } = chart;
  if (x.length === 0) throw new Error("'x' must not be empty");
  for (const s of series) {
    if (s.values.length !== x.length) {
      throw new Error(`series '${s.name}' must have ${x.length} values (one per x), got ${s.values.length}`);
    }
  }
  const width = 560;
  // The legend sits under the x axis, one row per series, so it never hides a curve.
  const legendHeight = 18 * series.length;
  const height = 380 + legendHeight;
  const margin = { left: 60, right: 20, top: 40, bottom: 50 + legendHeight };
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const [xMin, xMax] = [Math.min(...x), Math.max(...x)];
  const [yMin, yMax] = chart.yRange ?? [0, 1];
  const px = (v: number) =>
    margin.left + (xMax > xMin ? ((v - xMin) / (xMax - xMin)) * plotWidth : plotWidth / 2);
  const py = (v: number) => margin.top + plotHeight - ((v - yMin) / (yMax - yMin)) * plotHeight;
  const f = (v: number) => v.toFixed(1);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, sans-serif">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="22" font-size="15" text-anchor="middle">${escapeXml(chart.title)}</text>`,
  ];
  for (const tick of niceTicks(yMin, yMax, 5)) {
    parts.push(
      `<line x1="${margin.left}" x2="${margin.left + plotWidth}" y1="${f(py(tick))}" y2="${f(py(tick))}" stroke="#ddd"/>`,
      `<text x="${margin.left - 6}" y="${f(py(tick) + 4)}" font-size="11" text-anchor="end">${tick}</text>`,
    );
  }
  for (const tick of niceTicks(xMin, xMax, 6)) {
    parts.push(
      `<line x1="${f(px(tick))}" x2="${f(px(tick))}" y1="${margin.top}" y2="${margin.top + plotHeight}" stroke="#eee"/>`,
      `<text x="${f(px(tick))}" y="${margin.top + plotHeight + 16}" font-size="11" text-anchor="middle">${tick}</text>`,
    );
  }
  parts.push(
    `<rect x="${margin.left}" y="${margin.top}" width="${plotWidth}" height="${plotHeight}" fill="none" stroke="#333"/>`,
    `<text x="${margin.left + plotWidth / 2}" y="${margin.top + plotHeight + 38}" font-size="12" text-anchor="middle">${escapeXml(chart.xLabel)}</text>`,
    `<text x="16" y="${margin.top + plotHeight / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 16 ${margin.top + plotHeight / 2})">${escapeXml(chart.yLabel)}</text>`,
  );
  series.forEach((s, index) => {
    const color = s.color ?? PALETTE[index % PALETTE.length];
    const points = x.map((xv, i) => `${f(px(xv))},${f(py(s.values[i]))}`).join(' ');
    parts.push(
      `<polyline class="series" data-name="${escapeXml(s.name)}" points="${points}" fill="none" stroke="${color}" stroke-width="2"/>`,
    );
    for (let i = 0; i < x.length; i++) {
      parts.push(`<circle cx="${f(px(x[i]))}" cy="${f(py(s.values[i]))}" r="3" fill="${color}"/>`);
    }
    const legendY = margin.top + plotHeight + 62 + index * 18;
    parts.push(
      `<line x1="${margin.left}" x2="${margin.left + 24}" y1="${legendY - 4}" y2="${legendY - 4}" stroke="${color}" stroke-width="2"/>`,
      `<text x="${margin.left + 30}" y="${legendY}" font-size="11">${escapeXml(s.name)}</text>`,
    );
  });
  parts.push('</svg>');
  return parts.join('\n');
}
