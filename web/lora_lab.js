// LoRA Lab's canvas extension: TrainLoRA's "preset" fills the node's fields from the guides'
// settings (served by the pack at /lora_lab/presets), and picking Prodigy sets its learning rate
// of 1.0. The fields stay editable: these only write them once, when the choice is made.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

let presetsPromise = null;
function loadPresets() {
  presetsPromise ??= api.fetchApi("/lora_lab/presets").then((r) => (r.ok ? r.json() : {}));
  return presetsPromise;
}

function datasetSource(node) {
  const input = node.inputs?.find((i) => i.name === "dataset");
  if (input?.link == null) return null;
  const link = node.graph?.links?.[input.link] ?? node.graph?.links?.get?.(input.link);
  const source = link && node.graph.getNodeById(link.origin_id);
  return source?.comfyClass === "LoadDataset" || source?.type === "LoadDataset" ? source : null;
}

function setWidget(node, name, value) {
  const widget = node.widgets?.find((w) => w.name === name);
  if (!widget) return false;
  widget.value = value;
  widget.callback?.(value);
  return true;
}

export async function applyPreset(node, name) {
  const presets = await loadPresets();
  const preset = presets[name];
  if (!preset) return [];
  const applied = [];
  for (const [field, value] of Object.entries(preset.values)) {
    if (field === "dataset_resolution") {
      const dataset = datasetSource(node);
      if (dataset && setWidget(dataset, "resolution", value)) applied.push("resolution");
    } else if (setWidget(node, field, value)) {
      applied.push(field);
    }
  }
  node.setDirtyCanvas?.(true, true);
  return applied;
}

// Prodigy finds its own step size and wants learning rate 1.0; the others want about 1e-4. Picking an
// optimizer moves a learning rate that is clearly for the other kind (a user's own value in range stays).
function followOptimizer(node, optimizer) {
  const lr = node.widgets?.find((w) => w.name === "learning_rate");
  if (!lr) return;
  if (optimizer === "Prodigy" && lr.value < 0.1) setWidget(node, "learning_rate", 1.0);
  else if (optimizer !== "Prodigy" && lr.value >= 0.1) setWidget(node, "learning_rate", 1e-4);
}

app.registerExtension({
  name: "LoRALab.TrainPresets",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "TrainLoRA") return;
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
