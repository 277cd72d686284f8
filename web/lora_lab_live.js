// LoRA Lab's live training chart, inside the Train LoRA node: the loss (raw, faint, and smoothed) and the
// learning rate, drawn as the run goes, with "step 120/500 · 3.4 it/s · ETA 1:52" above them. The server
// (nodes/train_progress.py) sends "lora_lab.train_progress" events, at most 4 a second and always the last
// step, each with only the points since the previous one; this keeps a bounded series per node. A page
// opened or reloaded mid-run, or one that missed events, asks /lora_lab/train_progress for the run so far.
// Sample images stay in ComfyUI's own preview on the node, below the chart (the node grows to fit both). Nothing here runs without a
// training: the chart is added to a Train LoRA node by its first event.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "lora_lab.train_progress";
const MAX_POINTS = 600; // per node; halved (every other point, keeping the newest) when it grows past
const CHART_HEIGHT = 190;
const COLOURS = { raw: "rgba(130,165,220,0.45)", smoothed: "#6fa8ff", rate: "#ff9f40", axis: "#888", text: "#ddd" };

function clock(seconds) {
  if (seconds == null || !isFinite(seconds)) return "–";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

export function statusLine(live) {
  if (!live.step) return "waiting for the first step…";
  const parts = [`step ${live.step}/${live.total}`];
  if (live.it_per_s != null) {
    parts.push(live.it_per_s >= 1 ? `${live.it_per_s.toFixed(1)} it/s` : `${(1 / live.it_per_s).toFixed(1)} s/it`);
  }
  parts.push(live.running === false || live.step >= live.total ? "done" : `ETA ${clock(live.eta_s)}`);
  if (live.smoothed_loss != null) parts.push(`loss ${live.smoothed_loss.toFixed(4)}`);
  return parts.join(" · ");
}

function thin(points) {
  while (points.length > MAX_POINTS) points = points.slice().reverse().filter((_, i) => i % 2 === 0).reverse();
  return points;
}

function chartWidget(node) {
  let widget = node.widgets?.find((w) => w.name === "lora_lab_live");
  if (widget) return widget;
  const element = document.createElement("div");
  element.className = "lora-lab-live";
  element.style.cssText = "display:flex;flex-direction:column;gap:2px;font:12px sans-serif;color:" + COLOURS.text;
  const line = document.createElement("div");
  line.className = "lora-lab-live-status";
  line.style.cssText = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;padding:0 4px";
  const canvas = document.createElement("canvas");
  canvas.className = "lora-lab-live-chart";
  canvas.style.cssText = "flex:1;width:100%;min-height:0;background:rgba(0,0,0,0.25);border-radius:4px";
  element.append(line, canvas);
  widget = node.addDOMWidget("lora_lab_live", "lora_lab_live", element, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => CHART_HEIGHT,
    getMaxHeight: () => CHART_HEIGHT,
  });
  widget.serialize = false;
  widget.serializeValue = () => undefined;
  widget.line = line;
  widget.canvas = canvas;
  node.setSize([Math.max(node.size[0], 340), node.size[1]]);
  fit(node);
  new ResizeObserver(() => draw(node)).observe(canvas);
  return widget;
}

// The node as tall as its widgets need: the chart, and ComfyUI's sample image preview added below it
// (the frontend adds that widget without growing the node, so the picture would hang below the node).
function fit(node) {
  const needed = node.computeSize();
  if (node.size[1] < needed[1] || node.size[0] < needed[0]) {
    node.setSize([Math.max(node.size[0], needed[0]), Math.max(node.size[1], needed[1])]);
  }
}

function draw(node) {
  const live = node.loraLabLive;
  const widget = node.widgets?.find((w) => w.name === "lora_lab_live");
  if (!live || !widget || node.flags?.collapsed) return; // collapsed: drawn again on the next event
  fit(node);
  widget.line.textContent = statusLine(live);
  const canvas = widget.canvas;
  const ratio = window.devicePixelRatio || 1;
  const width = Math.round(canvas.clientWidth * ratio);
  const height = Math.round(canvas.clientHeight * ratio);
  if (width < 20 || height < 20) return;
  if (canvas.width !== width || canvas.height !== height) [canvas.width, canvas.height] = [width, height];
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const points = live.points;
  if (!points.length) return;
  ctx.save();
  ctx.scale(ratio, ratio);
  const w = width / ratio;
  const h = height / ratio;
  const pad = { left: 44, right: 44, top: 16, bottom: 16 };
  const losses = points.flatMap((p) => [p[1], p[2]]).filter((v) => v != null && isFinite(v));
  let [low, high] = [Math.min(...losses), Math.max(...losses)];
  if (high - low < 1e-12) [low, high] = [low - 0.5, high + 0.5];
  const rateTop = Math.max(...points.map((p) => p[3] || 0)) || 1;
  const x = (step) => pad.left + ((step - 1) / Math.max(1, live.total - 1)) * (w - pad.left - pad.right);
  const y = (v) => pad.top + (1 - (v - low) / (high - low)) * (h - pad.top - pad.bottom);
  const yRate = (v) => pad.top + (1 - v / rateTop) * (h - pad.top - pad.bottom);
  const line = (column, colour, thickness, scale) => {
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(p[0]), scale(p[column])));
    ctx.strokeStyle = colour;
    ctx.lineWidth = thickness;
    ctx.stroke();
  };
  line(1, COLOURS.raw, 1, y);
  line(3, COLOURS.rate, 1.2, yRate);
  line(2, COLOURS.smoothed, 2, y);
  ctx.fillStyle = COLOURS.axis;
  ctx.font = "10px sans-serif";
  ctx.textAlign = "right";
  ctx.fillText(high.toPrecision(3), pad.left - 4, pad.top + 4);
  ctx.fillText(low.toPrecision(3), pad.left - 4, h - pad.bottom);
  ctx.textAlign = "left";
  ctx.fillStyle = COLOURS.rate;
  ctx.fillText(rateTop.toExponential(1), w - pad.right + 4, pad.top + 4);
  ctx.fillText("lr", w - pad.right + 4, h - pad.bottom);
  ctx.fillStyle = COLOURS.smoothed;
  ctx.fillText("loss (smoothed)", pad.left + 4, pad.top - 4);
  ctx.fillStyle = COLOURS.axis;
  ctx.textAlign = "right";
  ctx.fillText(`step ${live.total}`, w - pad.right, h - 3);
  ctx.restore();
}

const historyAsked = new Map(); // node id -> when the run so far was last fetched

async function fetchHistory(node, id) {
  const now = Date.now();
  if (now - (historyAsked.get(id) ?? 0) < 5000) return;
  historyAsked.set(id, now);
  const response = await api.fetchApi(`/lora_lab/train_progress?node=${encodeURIComponent(id)}`);
  const history = response.ok ? await response.json() : {};
  if (!history.points?.length) return;
  const live = node.loraLabLive;
  if (live && live.prompt_id === history.prompt_id) {
    const first = live.points[0]?.[0] ?? Infinity;
    live.points = thin([...history.points.filter((p) => p[0] < first), ...live.points]);
    draw(node);
  } else if (!live || !live.step) {
    receive(node, history);
  }
}

function receive(node, update) {
  let live = node.loraLabLive;
  if (!live || live.prompt_id !== update.prompt_id || update.step < live.step) {
    live = node.loraLabLive = { prompt_id: update.prompt_id, points: [] };
  }
  const last = live.points.length ? live.points[live.points.length - 1][0] : 0;
  const fresh = (update.points ?? []).filter((p) => p[0] > last);
  const gap = fresh.length && fresh[0][0] > last + 1;
  live.points = thin(live.points.concat(fresh));
  for (const key of ["step", "total", "loss", "smoothed_loss", "learning_rate", "it_per_s", "eta_s", "running"]) {
    if (key in update) live[key] = update[key];
  }
  chartWidget(node);
  draw(node);
  node.setDirtyCanvas?.(true, false);
  if (gap) fetchHistory(node, String(update.node)).catch(() => {});
}

app.registerExtension({
  name: "LoRALab.LiveTraining",
  setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const graph = app.graph;
      const node = graph?.getNodeById(detail.node) ?? graph?.getNodeById(Number(detail.node));
      if (!node || (node.comfyClass ?? node.type) !== "TrainLoRA") return; // e.g. inside a subgraph: not shown
      receive(node, detail);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "TrainLoRA") return;
    const collapse = nodeType.prototype.collapse;
    nodeType.prototype.collapse = function () {
      const result = collapse?.apply(this, arguments);
      requestAnimationFrame(() => draw(this));
      return result;
    };
  },
});
