// The loss chart: train and validation loss against the step, drawn on a <canvas>.
//
// Our own small code rather than a chart library: two lines, axes with round ticks, a
// legend, redrawn whenever points arrive or the canvas is resized. The canvas carries
// data-train-points / data-val-points: how many points the last drawing plotted (what the
// browser tests wait on).

const COLORS = { train: "#2563eb", val: "#ea580c", grid: "#e5e7eb", axis: "#6b7280", text: "#374151" };
const PAD = { left: 56, right: 16, top: 30, bottom: 38 };

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
  if (Math.abs(value) >= 1000) return `${Math.round(value / 100) / 10}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/\.?0+$/, "");
}

export class LossChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.train = [];
    this.val = [];
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(canvas);
  }

  // Points as /runs/{id}/metrics answers them ({step, train_loss, val_loss}), in step order.
  add(points) {
    for (const p of points) {
      if (typeof p.train_loss === "number") this.train.push([p.step, p.train_loss]);
      if (typeof p.val_loss === "number") this.val.push([p.step, p.val_loss]);
    }
    this.draw();
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

    const all = this.train.concat(this.val);
    if (!all.length) {
      g.fillStyle = COLORS.axis;
      g.textAlign = "center";
      g.fillText("No loss points yet: they appear as the run trains.", width / 2, height / 2);
      this.mark(0, 0);
      return;
    }
    const steps = all.map((p) => p[0]);
    const losses = all.map((p) => p[1]);
    let [x0, x1] = [Math.min(...steps), Math.max(...steps)];
    let [y0, y1] = [Math.min(...losses), Math.max(...losses)];
    if (x1 === x0) x1 = x0 + 1;
    const margin = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1;
    y0 = Math.max(0, y0 - margin);
    y1 += margin;
    const plotW = width - PAD.left - PAD.right;
    const plotH = height - PAD.top - PAD.bottom;
    const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * plotW;
    const sy = (y) => PAD.top + (1 - (y - y0) / (y1 - y0)) * plotH;

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
      if (!Number.isInteger(v)) continue;
      g.fillText(label(v), sx(v), PAD.top + plotH + 6);
    }
    // Axes and their names.
    g.strokeStyle = COLORS.axis;
    g.beginPath();
    g.moveTo(PAD.left, PAD.top);
    g.lineTo(PAD.left, PAD.top + plotH);
    g.lineTo(PAD.left + plotW, PAD.top + plotH);
    g.stroke();
    g.fillStyle = COLORS.axis;
    g.fillText("step", PAD.left + plotW / 2, height - 14);
    g.save();
    g.translate(14, PAD.top + plotH / 2);
    g.rotate(-Math.PI / 2);
    g.fillText("loss", 0, -6);
    g.restore();

    this.line(g, this.train, COLORS.train, sx, sy, false);
    this.line(g, this.val, COLORS.val, sx, sy, true);
    this.legend(g, width);
    this.mark(this.train.length, this.val.length);
  }

  line(g, points, color, sx, sy, dots) {
    if (!points.length) return;
    g.strokeStyle = color;
    g.fillStyle = color;
    g.lineWidth = 2;
    g.lineJoin = "round";
    g.beginPath();
    points.forEach(([x, y], i) => (i ? g.lineTo(sx(x), sy(y)) : g.moveTo(sx(x), sy(y))));
    g.stroke();
    if (dots || points.length === 1) {
      for (const [x, y] of points) {
        g.beginPath();
        g.arc(sx(x), sy(y), 3, 0, 2 * Math.PI);
        g.fill();
      }
    }
  }

  legend(g, width) {
    const entries = [
      ["train loss", COLORS.train, this.train],
      ["validation loss", COLORS.val, this.val],
    ];
    g.textAlign = "left";
    g.textBaseline = "middle";
    let x = width - PAD.right;
    for (const [name, color, points] of entries.reverse()) {
      const last = points.length ? ` ${points[points.length - 1][1].toFixed(3)}` : "";
      const text = name + last;
      x -= g.measureText(text).width + 28;
      g.fillStyle = color;
      g.fillRect(x, 11, 14, 3);
      g.fillStyle = COLORS.text;
      g.fillText(text, x + 19, 13);
    }
  }

  mark(train, val) {
    this.canvas.dataset.trainPoints = String(train);
    this.canvas.dataset.valPoints = String(val);
  }
}
