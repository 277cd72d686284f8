"""SaveCheckpoint: write a trained LoRA into models/loras in kohya's format."""

from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..trainer_core.adapters.export import LoRAWeights, sanitize_filename, save_lora, unique_path
from .key_formats import KEY_NAMES, comfy_unread_layers, with_key_names
from .types import LoraModel

IF_EXISTS = ["add number", "overwrite", "error"]


def loras_folder() -> Path:
    return Path(folder_paths.get_folder_paths("loras")[0])


class SaveCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SaveCheckpoint",
            display_name="Save LoRA",
            category="LoRA Lab/Training",
            description=(
                "Saves the LoRA into models/loras as .safetensors with the key names its model family's own "
                "trainers write (kohya's for SD1.5/SDXL/Flux, musubi-tuner's for Wan, ...; the README's family "
                "table), alpha and ss_* metadata, so the stock LoraLoader lists it at once and other tools read it."
            ),
            inputs=[
                LoraModel.Input("lora", tooltip="The LoRA from Train LoRA."),
                io.String.Input(
                    "filename", default="lora_lab/my_lora",
                    tooltip="Name inside models/loras, without extension; '/' makes sub-folders. Spaces become "
                    "underscores, characters that break on Windows/macOS/Linux are replaced.",
                ),
                io.Combo.Input(
                    "if_exists", options=IF_EXISTS, default="add number",
                    tooltip="When the file exists: add a number (my_lora_0001), overwrite it, or stop with an error.",
                ),
                io.Combo.Input(
                    "key_names", options=list(KEY_NAMES), default=KEY_NAMES[0], optional=True,
                    tooltip="The file's key names. 'family default': the names ComfyUI and diffusers read for this "
                    "model family (HunyuanVideo: diffusion-pipe's). 'musubi-tuner (lora_unet_)': HunyuanVideo LoRAs "
                    "under musubi-tuner's names, which its hv_generate_video.py reads; ComfyUI's LoraLoader then "
                    "leaves out the modulation and MLP layers. Other families' names are musubi's or kohya's already.",
                ),
            ],
            outputs=[
                LoraModel.Output("saved_lora", display_name="lora", tooltip="The same LoRA, now knowing its file name."),
                io.String.Output("lora_name", display_name="lora_name", tooltip="The saved file's name as LoraLoader lists it."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename: str, if_exists: str) -> bool | str:
        try:
            sanitize_filename(filename)
        except ValueError as error:
            return f"filename: {error}"
        if if_exists not in IF_EXISTS:
            return f"if_exists must be one of {IF_EXISTS}, got {if_exists!r}"
        return True

    @classmethod
    def execute(cls, lora: LoRAWeights, filename: str, if_exists: str, key_names: str = KEY_NAMES[0]) -> io.NodeOutput:
        if not isinstance(lora, dict) or not lora:
            raise ValueError("lora: the input holds no LoRA weights; connect the 'lora' output of Train LoRA")
        tensors, key_format = with_key_names(lora, dict(getattr(lora, "metadata", {})), key_names)
        root = loras_folder()
        stem = sanitize_filename(filename)
        path = root / f"{stem}.safetensors"
        if path.exists():
            if if_exists == "error":
                raise FileExistsError(
                    f"filename: {path} exists already. Choose another name, or set if_exists to 'add number' or "
                    "'overwrite'."
                )
            if if_exists == "add number":
                path = unique_path(path.parent, path.stem)
        saved = LoRAWeights(lora, getattr(lora, "metadata", {}))
        saved.metadata["ss_output_name"] = path.stem
        written = LoRAWeights(tensors, {**saved.metadata, **({"lora_lab_key_format": key_format} if key_format else {})})
        save_lora(written, path, overwrite=True)
        saved.file = path  # the strength sweep writes its recommendation back into this file
        saved.written = None if tensors is lora else written  # renamed: the file holds these tensors
        name = path.relative_to(root).as_posix()
        text = f"Saved {name}\n{path}"
        unread = comfy_unread_layers(written) if tensors is not lora else []
        if unread:
            text += (f"\nmusubi-tuner names: ComfyUI's LoraLoader does not read {len(unread)} of its layers under them "
                     f"(modulation and MLP, e.g. {unread[0]}); for ComfyUI and diffusers save with key_names "
                     "'family default'")
            print(f"[LoRA Lab] Save LoRA: {text.splitlines()[-1]}", flush=True)
        return io.NodeOutput(saved, name, ui=ui.PreviewText(text))
