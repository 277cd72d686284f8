// LoRA Lab's canvas extension: TrainLoRA's "preset" fills the fields from the guides' settings
// (served by the pack at /lora_lab/presets), on TrainLoRA or on the settings node that hosts each
// field (wired into the matching TrainLoRA input; added beside TrainLoRA when none is wired and the
// value is not that node's default), and picking Prodigy sets its learning rate of 1.0. The fields
// stay editable: these only write them once, when the choice is made.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

let presetsPromise = null;
function loadPresets() {
  presetsPromise ??= api
    .fetchApi("/lora_lab/presets")
    .then((r) => (r.ok ? r.json() : {}))
    .then((table) => ({ presets: table.presets ?? {}, hosts: table.settings_hosts ?? {} }));
  return presetsPromise;
}

// The node of type `type` wired into `node`'s input `name`, or null.
function wiredSource(node, name, type) {
  const input = node.inputs?.find((i) => i.name === name);
  if (input?.link == null) return null;
  const link = node.graph?.links?.[input.link] ?? node.graph?.links?.get?.(input.link);
  const source = link && node.graph.getNodeById(link.origin_id);
  return source?.comfyClass === type || source?.type === type ? source : null;
}

// The settings node that hosts a field ({node, socket, default}): the one wired into TrainLoRA's
// socket; else, when `create`, a new one placed to the left of TrainLoRA and connected.
function settingsNode(node, host, create) {
  const wired = wiredSource(node, host.socket, host.node);
  if (wired || !create) return wired;
  const graph = node.graph ?? app.graph;
  const created = LiteGraph.createNode(host.node);
  if (!created) return null;
  graph.add(created);
  const socket = node.inputs.findIndex((i) => i.name === host.socket);
  const taken = node.inputs.filter((i) => i.name.endsWith("_settings") && i.link != null).length;
  created.pos = [node.pos[0] - created.size[0] - 40, node.pos[1] + taken * (created.size[1] + 20)];
  created.connect(0, node, socket);
  return created;
}

function setWidget(node, name, value) {
  const widget = node.widgets?.find((w) => w.name === name);
  if (!widget) return false;
  widget.value = value;
  widget.callback?.(value);
  return true;
}

export async function applyPreset(node, name) {
  const { presets, hosts } = await loadPresets();
  const preset = presets[name];
  if (!preset) return [];
  const applied = [];
  for (const [field, value] of Object.entries(preset.values)) {
    if (field === "dataset_resolution") {
      const dataset = wiredSource(node, "dataset", "LoadDataset");
      if (dataset && setWidget(dataset, "resolution", value)) applied.push("resolution");
    } else if (setWidget(node, field, value)) {
      applied.push(field);
    } else if (hosts[field]) {
      const host = hosts[field];
      const settings = settingsNode(node, host, value !== host.default);
      if (settings && setWidget(settings, field, value)) applied.push(field);
    }
  }
  node.setDirtyCanvas?.(true, true);
  return applied;
}

// Train LoRA's own default learning rate, read from its definition when the node type registers.
let defaultRate = 5e-4;

// Prodigy finds its own step size and wants learning rate 1.0; the others want Train LoRA's default. Picking
// an optimizer moves a learning rate that is clearly for the other kind (a user's own value in range stays).
function followOptimizer(node, optimizer) {
  const lr = node.widgets?.find((w) => w.name === "learning_rate");
  if (!lr) return;
  if (optimizer === "Prodigy" && lr.value < 0.1) setWidget(node, "learning_rate", 1.0);
  else if (optimizer !== "Prodigy" && lr.value >= 0.1) setWidget(node, "learning_rate", defaultRate);
}

app.registerExtension({
  name: "LoRALab.TrainPresets",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "TrainLoRA") return;
    defaultRate = nodeData.input?.required?.learning_rate?.[1]?.default ?? defaultRate;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      const node = this;
      const widget = node.widgets?.find((w) => w.name === "preset");
      if (widget) {
        const original = widget.callback;
        widget.callback = function (value) {
          const out = original?.apply(this, arguments);
          if (value !== "custom") applyPreset(node, value);
          return out;
        };
      }
      const optimizer = node.widgets?.find((w) => w.name === "optimizer");
      if (optimizer) {
        const original = optimizer.callback;
        optimizer.callback = function (value) {
          const out = original?.apply(this, arguments);
          followOptimizer(node, value);
          return out;
        };
      }
      return result;
    };
  },
});
