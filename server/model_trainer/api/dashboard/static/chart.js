// Loss charts drawn on a <canvas>: one run's train and validation loss against the step
// (LossChart), and several runs' curves side by side (MultiLossChart).
//
// Our own small code rather than a chart library: lines, axes with round ticks, a legend,
// redrawn whenever points arrive or the canvas is resized. Both charts share the drawing
// (Chart.draw); they differ in the series they hand it. Each canvas carries how many points
// its last drawing plotted (what the browser tests wait on): data-train-points /
// data-val-points for one run, data-series / data-points (and data-faded) for several.

const COLORS = { train: "#2563eb", val: "#ea580c", grid: "#e5e7eb", axis: "#6b7280", text: "#374151" };
const PAD = { left: 56, right: 16, top: 30, bottom: 38 };
const LEGEND_ROW = 18;
// How opaque a faded series is: a sweep's trials stopped early stay readable, behind the rest.
const FADED = 0.35;
// The runs' colors: ten that tell apart well, then golden-angle hues (up to 32 runs compare).
const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];

export function runColor(i) {
  return i < PALETTE.length ? PALETTE[i] : `hsl(${Math.round((i * 137.5) % 360)}, 65%, 42%)`;
}

// About `count` round tick values covering [lo, hi] (1, 2 or 5 times a power of ten apart).
function ticks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}

function label(value) {
  if (Math.abs(value) >= 1e6) return `${Math.round(value / 1e5) / 10}M`;
  if (Math.abs(value) >= 1000) return `${Math.round(value / 100) / 10}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/\.?0+$/, "");
}

// What a subclass gives draw():
//   series(): [{color, points: [[x, y], ...], dashed, dots, faded}], in drawing order;
//   legend(): [{text, color, dashed, faded}], laid out right-aligned in rows above the plot;
//   xName, integerX (ticks only on whole numbers: steps, tokens), emptyText;
//   mark(series): the data-* attributes of what was drawn.
class Chart {
  constructor(canvas) {
    this.canvas = canvas;
    this.xName = "step";
    this.integerX = true;
    this.emptyText = "No loss points yet.";
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(canvas);
  }

  dispose() {
    this.resize.disconnect();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    g.font = "12px system-ui, sans-serif";

    const series = this.series().filter((s) => s.points.length);
    const all = series.flatMap((s) => s.points);
    if (!all.length) {
      g.fillStyle = COLORS.axis;
      g.textAlign = "center";
      g.fillText(this.emptyText, width / 2, height / 2);
      this.mark(series);
      return;
    }
    // The legend first: its rows push the plot down.
    const rows = this.legendRows(g, width);
    const top = PAD.top + (rows.length - 1) * LEGEND_ROW;
    const xs = all.map((p) => p[0]);
    const ys = all.map((p) => p[1]);
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x1 === x0) x1 = x0 + 1;
    const margin = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1;
    y0 = Math.max(0, y0 - margin);
    y1 += margin;
    const plotW = width - PAD.left - PAD.right;
    const plotH = Math.max(20, height - top - PAD.bottom);
    const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * plotW;
    const sy = (y) => top + (1 - (y - y0) / (y1 - y0)) * plotH;

    // Grid and tick labels.
    g.strokeStyle = COLORS.grid;
    g.fillStyle = COLORS.text;
    g.lineWidth = 1;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (const v of ticks(y0, y1, 5)) {
      g.beginPath();
      g.moveTo(PAD.left, sy(v));
      g.lineTo(PAD.left + plotW, sy(v));
      g.stroke();
      g.fillText(label(v), PAD.left - 6, sy(v));
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    for (const v of ticks(x0, x1, Math.max(2, Math.floor(plotW / 90)))) {
      if (this.integerX && !Number.isInteger(v)) continue;
      g.fillText(label(v), sx(v), top + plotH + 6);
    }
    // Axes and their names.
    g.strokeStyle = COLORS.axis;
    g.beginPath();
    g.moveTo(PAD.left, top);
    g.lineTo(PAD.left, top + plotH);
    g.lineTo(PAD.left + plotW, top + plotH);
    g.stroke();
    g.fillStyle = COLORS.axis;
    g.fillText(this.xName, PAD.left + plotW / 2, height - 14);
    g.save();
    g.translate(14, top + plotH / 2);
    g.rotate(-Math.PI / 2);
    g.fillText("loss", 0, -6);
    g.restore();

    for (const s of series) this.line(g, s, sx, sy);
    this.drawLegend(g, rows, width);
    this.mark(series);
  }

  line(g, { points, color, dashed, dots, faded }, sx, sy) {
    g.globalAlpha = faded ? FADED : 1;
    g.strokeStyle = color;
    g.fillStyle = color;
    g.lineWidth = 2;
    g.lineJoin = "round";
    g.setLineDash(dashed ? [5, 4] : []);
    g.beginPath();
    points.forEach(([x, y], i) => (i ? g.lineTo(sx(x), sy(y)) : g.moveTo(sx(x), sy(y))));
    g.stroke();
    g.setLineDash([]);
    if (dots || points.length === 1) {
      for (const [x, y] of points) {
        g.beginPath();
        g.arc(sx(x), sy(y), 3, 0, 2 * Math.PI);
        g.fill();
      }
    }
    g.globalAlpha = 1;
  }

  // The legend's entries in rows that fit the width, each with its measured width.
  legendRows(g, width) {
    const room = width - PAD.left - PAD.right;
    const rows = [[]];
    let used = 0;
    for (const entry of this.legend()) {
      const w = g.measureText(entry.text).width + 28;
      if (used + w > room && rows[rows.length - 1].length) {
        rows.push([]);
        used = 0;
      }
      rows[rows.length - 1].push({ ...entry, w });
      used += w;
    }
    return rows;
  }

  drawLegend(g, rows, width) {
    g.textAlign = "left";
    g.textBaseline = "middle";
    g.lineWidth = 3;
    rows.forEach((row, i) => {
      const y = 13 + i * LEGEND_ROW;
      let x = width - PAD.right - row.reduce((sum, e) => sum + e.w, 0);
      for (const { text, color, dashed, faded, w } of row) {
        g.globalAlpha = faded ? FADED : 1;
        g.strokeStyle = color;
        g.setLineDash(dashed ? [4, 3] : []);
        g.beginPath();
        g.moveTo(x, y);
        g.lineTo(x + 14, y);
        g.stroke();
        g.fillStyle = COLORS.text;
        g.fillText(text, x + 19, y);
        x += w;
      }
    });
    g.globalAlpha = 1;
    g.setLineDash([]);
  }
}

// One run's train loss (line) and validation loss (line with dots) against the step.
export class LossChart extends Chart {
  constructor(canvas) {
    super(canvas);
    this.train = [];
    this.val = [];
    this.emptyText = "No loss points yet: they appear as the run trains.";
  }

  // Points as /runs/{id}/metrics answers them ({step, train_loss, val_loss}), in step order.
  add(points) {
    for (const p of points) {
      if (typeof p.train_loss === "number") this.train.push([p.step, p.train_loss]);
      if (typeof p.val_loss === "number") this.val.push([p.step, p.val_loss]);
    }
    this.draw();
  }

  series() {
    return [
      { points: this.train, color: COLORS.train },
      { points: this.val, color: COLORS.val, dots: true },
    ];
  }

  legend() {
    const last = (points) => (points.length ? ` ${points[points.length - 1][1].toFixed(3)}` : "");
    return [
      { text: `train loss${last(this.train)}`, color: COLORS.train },
      { text: `validation loss${last(this.val)}`, color: COLORS.val },
    ];
  }

  mark() {
    this.canvas.dataset.trainPoints = String(this.train.length);
    this.canvas.dataset.valPoints = String(this.val.length);
  }
}

// Several runs' curves on one chart, one color per run: train loss solid, validation loss
// dashed with dots, against the step, the tokens seen or the seconds of training.
export const AXES = { step: "step", tokens: "tokens seen", seconds: "seconds of training" };

export class MultiLossChart extends Chart {
  constructor(canvas) {
    super(canvas);
    this.runs = [];
    this.emptyText = "No loss points yet: they appear as the runs train.";
    this.setAxis("step");
  }

  // Runs as /runs/compare answers them, each with `label` (its name or id) added and
  // `faded` set to draw it behind the others (a sweep's trial stopped early).
  show(runs) {
    this.runs = runs;
    this.draw();
  }

  setAxis(axis) {
    this.axis = axis;
    this.xName = AXES[axis];
    this.integerX = axis !== "seconds";
    this.draw();
  }

  // [x, loss] of one run's curve; a point without a value on this axis is left out.
  pointsOf(run, loss) {
    return run.curve
      .filter((p) => typeof p[this.axis] === "number" && typeof p[loss] === "number")
      .map((p) => [p[this.axis], p[loss]]);
  }

  series() {
    return this.runs.flatMap((run, i) => [
      { run: i, points: this.pointsOf(run, "train_loss"), color: runColor(i), faded: run.faded },
      { run: i, points: this.pointsOf(run, "val_loss"), color: runColor(i), dashed: true, dots: true, faded: run.faded },
    ]);
  }

  legend() {
    return [
      { text: "train", color: COLORS.axis },
      { text: "validation", color: COLORS.axis, dashed: true },
      ...this.runs.map((run, i) => ({ text: run.label, color: runColor(i), faded: run.faded })),
    ];
  }

  // `series` holds only what was drawn (empty curves left out): runs with a point, points,
  // and how many of those runs were faded.
  mark(series) {
    const drawn = (list) => new Set(list.map((s) => s.run)).size;
    this.canvas.dataset.series = String(drawn(series));
    this.canvas.dataset.faded = String(drawn(series.filter((s) => s.faded)));
    this.canvas.dataset.points = String(series.reduce((sum, s) => sum + s.points.length, 0));
    this.canvas.setAttribute("aria-label", `Loss of ${this.runs.map((r) => r.label).join(", ")} against ${this.xName}`);
  }
}
