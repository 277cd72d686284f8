"""Image-to-text captioners through transformers: BLIP, GIT, Florence-2 and the like.

Whatever ``AutoProcessor`` and a generation-capable model class load from a local folder
(``local_files_only=True``: nothing is downloaded) captions the images. The model class is found
by trying, in order, ``AutoModelForImageTextToText`` (transformers 4.50+ maps BLIP, GIT, Florence-2,
vision-encoder-decoder models there), ``AutoModelForVision2Seq`` (removed in transformers 5),
``AutoModelForCausalLM`` (GIT; remote-code models) and ``AutoModel``; the first that recognises
the folder's config and can ``generate`` wins.

Prompts: BLIP takes an optional text prefix that starts the sentence and stays in it ('a picture
of'); Florence-2 style processors (they have ``post_process_generation``) take a task prompt
(``<MORE_DETAILED_CAPTION>``, the default when none is given). Decoder-only models echo their
input tokens; those are cut off. Chat-template models (LLaVA, Qwen-VL) are not supported yet.
"""

from __future__ import annotations

import gc
import logging
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .base import CaptionerModelError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
FLORENCE_DEFAULT_TASK = "<MORE_DETAILED_CAPTION>"
MODEL_CLASS_NAMES = (
    "AutoModelForImageTextToText",
    "AutoModelForVision2Seq",
    "AutoModelForCausalLM",
    "AutoModel",
)
_EXPECTED = (
    "an image-to-text model folder holds config.json, the weights (model.safetensors or pytorch_model.bin)"
    " and the processor files (preprocessor_config.json or processor_config.json, tokenizer files), as"
    " saved by save_pretrained or downloaded whole from a model page (e.g. Salesforce/blip-image-captioning-base)"
)


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class VisionLanguageOptions:
    """How an image-to-text model writes its captions."""

    prompt: str = _help(
        "Optional text given to the model with each image: a task for Florence-2 style models"
        " ('<DETAILED_CAPTION>', '<MORE_DETAILED_CAPTION>' when empty), the start of the sentence for BLIP"
        " ('a photo of'). Empty = the model's own default.",
        "",
    )
    max_new_tokens: int = _help(
        "Longest caption the model may write, in tokens (about 3/4 of a word each).", 75
    )
    num_beams: int = _help("Beam search width: 1 = greedy (fastest); 3 is Florence-2's default.", 1)
    trust_remote_code: bool = _help(
        "Let the model folder run its own Python code (needed by some models, such as the original"
        " Florence-2 upload, on older transformers). Only for folders from a source you trust.",
        False,
    )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise CaptionerModelError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise CaptionerModelError(f"num_beams must be at least 1, got {self.num_beams}")


class VisionLanguageCaptioner:
    """A loaded processor + model pair; ``caption`` runs one ``generate`` per call."""

    def __init__(
        self,
        folder: Path,
        processor: Any,
        tokenizer: Any,
        model: Any,
        options: VisionLanguageOptions,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.folder = folder
        self.processor = processor
        self.tokenizer = tokenizer
        self.model = model
        self.options = options
        self.device = device
        self.dtype = dtype
        self._post_process = getattr(processor, "post_process_generation", None)
        self.prompt = options.prompt.strip() or (FLORENCE_DEFAULT_TASK if self._post_process else "")

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        if not images:
            return []
        if self.model is None:
            raise RuntimeError(f"the captioner {self.folder} was closed")
        images = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        inputs = self._prepare(images)
        try:
            generated = self.model.generate(
                **inputs,
                max_new_tokens=self.options.max_new_tokens,
                num_beams=self.options.num_beams,
                do_sample=False,
            )
        except (RuntimeError, ValueError, TypeError) as error:
            raise CaptionerModelError(
                f"the model in {self.folder} failed to generate captions ({type(error).__name__}: {error})."
                f" {_version_hint()}"
            ) from error
        sequences = getattr(generated, "sequences", generated)
        sequences = _without_echoed_prompt(sequences, inputs.get("input_ids"))
        return [self._clean(text, image) for text, image in zip(self._decode(sequences), images, strict=True)]

    def close(self) -> None:
        """Free the model's memory; the captioner cannot be used afterwards."""
        on_gpu = self.device.type == "cuda"
        self.model = None
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()

    def _prepare(self, images: list[Image.Image]) -> dict[str, Any]:
        arguments: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if self.prompt:
            arguments["text"] = [self.prompt] * len(images)
        try:
            batch = self.processor(**arguments)
        except CaptionerModelError:
            raise
        except (ValueError, TypeError, KeyError) as error:
            raise CaptionerModelError(
                f"the processor in {self.folder} refused the images{' and prompt' if self.prompt else ''}"
                f" ({error}). Models that need a chat template are not supported; for BLIP leave the prompt"
                " empty or give the start of a sentence, for Florence-2 a task such as <DETAILED_CAPTION>."
            ) from error
        moved: dict[str, Any] = {}
        for name, value in dict(batch).items():
            if isinstance(value, torch.Tensor):
                value = (
                    value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
                )
            moved[name] = value
        return moved

    def _decode(self, sequences: torch.Tensor) -> list[str]:
        skip_special = self._post_process is None  # Florence-2 post-processing reads the special tokens
        return list(self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special))

    def _clean(self, text: str, image: Image.Image) -> str:
        if self._post_process is not None:
            parsed = self._post_process(text, task=self.prompt, image_size=image.size)
            value = parsed.get(self.prompt, "") if isinstance(parsed, dict) else parsed
            text = value if isinstance(value, str) else ""
            text = re.sub(r"<[^>]+>", " ", text)  # leftover special tokens such as </s>
        return " ".join(text.split())


def load_vision_language_captioner(
    folder: Path,
    options: VisionLanguageOptions | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VisionLanguageCaptioner:
    """The image-to-text model in ``folder`` on ``device`` in ``dtype``; nothing is downloaded.

    ``CaptionerModelError`` names the folder and what is missing, or why this transformers version
    cannot load it.
    """
    folder = Path(folder)
    options = options or VisionLanguageOptions()
    check_model_folder(folder)
    transformers = import_transformers()
    config = _load_config(transformers, folder, options.trust_remote_code)
    processor, tokenizer = _load_processor(transformers, folder, options)
    model = _load_model(transformers, folder, config, dtype, options.trust_remote_code)
    model.to(torch.device(device))
    model.eval()
    return VisionLanguageCaptioner(folder, processor, tokenizer, model, options, torch.device(device), dtype)


def check_model_folder(folder: Path) -> None:
    """Raise ``CaptionerModelError`` unless ``folder`` has a config, weights and processor files."""
    if not folder.is_dir():
        raise CaptionerModelError(f"captioner folder {folder} does not exist: {_EXPECTED}")
    missing = []
    if not (folder / CONFIG_FILE).is_file():
        missing.append(CONFIG_FILE)
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        missing.append(" or ".join(PROCESSOR_FILES))
    if missing:
        raise CaptionerModelError(f"{folder} has no {', no '.join(missing)}: {_EXPECTED}")


def import_transformers() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            "image-to-text captioners need transformers: run `pip install transformers` in ComfyUI's Python"
            " environment"
        ) from error
    return transformers


def _version_hint() -> str:
    import transformers

    return (
        f"This is transformers {transformers.__version__}; models written for another version may need a"
        " version converted for native transformers, or a transformers version that matches the model's notes."
    )


def _load_config(transformers: Any, folder: Path, trust_remote_code: bool) -> Any:
    try:
        return transformers.AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise CaptionerModelError(
                f"the model in {folder} ships its own Python code. Turn trust_remote_code on if you trust the"
                f" folder's source, or use a version converted for native transformers. {_version_hint()}"
            ) from error
        raise CaptionerModelError(
            f"transformers cannot read {folder / CONFIG_FILE} ({error}). {_version_hint()}"
        ) from error
    except (OSError, KeyError, ImportError, AttributeError) as error:
        raise CaptionerModelError(
            f"cannot load {folder / CONFIG_FILE} ({error}). {_version_hint()}"
        ) from error


def _load_processor(transformers: Any, folder: Path, options: VisionLanguageOptions) -> tuple[Any, Any]:
    """(callable that turns images (+ text) into model inputs, tokenizer that decodes).

    AutoProcessor gives a full processor for BLIP, GIT, Florence-2; for vision-encoder-decoder
    folders (ViT + GPT-2) it gives only the tokenizer or only the image processor, and the other half
    is loaded on its own.
    """
    loaded = _from_pretrained(transformers.AutoProcessor, folder, options, "processor")
    if hasattr(loaded, "image_processor") and callable(getattr(loaded, "batch_decode", None)):
        return loaded, loaded
    if isinstance(loaded, transformers.PreTrainedTokenizerBase):
        image_processor = _from_pretrained(
            transformers.AutoImageProcessor, folder, options, "image processor"
        )
        return _SplitProcessor(image_processor, folder), loaded
    tokenizer = _from_pretrained(transformers.AutoTokenizer, folder, options, "tokenizer")
    return _SplitProcessor(loaded, folder), tokenizer


def _from_pretrained(auto_class: Any, folder: Path, options: VisionLanguageOptions, what: str) -> Any:
    try:
        return auto_class.from_pretrained(
            folder, local_files_only=True, trust_remote_code=options.trust_remote_code
        )
    except (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError) as error:
        raise CaptionerModelError(
            f"cannot load the {what} in {folder} ({type(error).__name__}: {error}): {_EXPECTED}. {_version_hint()}"
        ) from error


class _SplitProcessor:
    """Image processor of a model whose folder has no processor joining it to the tokenizer."""

    def __init__(self, image_processor: Any, folder: Path) -> None:
        self.image_processor = image_processor
        self.folder = folder

    def __call__(self, images: list[Image.Image], return_tensors: str = "pt", text: Any = None) -> Any:
        if text is not None:
            raise CaptionerModelError(
                f"the model in {self.folder} takes no prompt (it has no processor that reads text): leave the"
                " prompt empty"
            )
        return self.image_processor(images=images, return_tensors=return_tensors)


def _dtype_argument(transformers: Any) -> str:
    """from_pretrained's dtype keyword: 'dtype' since transformers 4.56, 'torch_dtype' before."""
    major, minor = (int(part) for part in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _load_model(
    transformers: Any, folder: Path, config: Any, dtype: torch.dtype, trust_remote_code: bool
) -> Any:
    unrecognised: list[str] = []
    for name in MODEL_CLASS_NAMES:
        auto_class = getattr(transformers, name, None)
        if auto_class is None:  # e.g. AutoModelForVision2Seq on transformers 5
            continue
        try:
            model = auto_class.from_pretrained(
                folder,
                config=config,
                local_files_only=True,
                trust_remote_code=trust_remote_code,
                **{_dtype_argument(transformers): dtype},
            )
        except ValueError as error:
            if "Unrecognized configuration class" in str(error):
                unrecognised.append(name)
                continue
            raise CaptionerModelError(
                f"cannot load the model in {folder} ({error}). {_version_hint()}"
            ) from error
        except _DAMAGED_WEIGHT_ERRORS as error:
            raise CaptionerModelError(
                f"cannot load the model in {folder} ({type(error).__name__}: {error}). The weights may be"
                f" damaged or incomplete: {_EXPECTED}. {_version_hint()}"
            ) from error
        if not callable(getattr(model, "generate", None)) or not _can_generate(model):
            del model
            unrecognised.append(name)
            continue
        logger.info("Auto Caption: %s loaded %s from %s", name, type(model).__name__, folder)
        return model
    model_type = getattr(config, "model_type", "?")
    raise CaptionerModelError(
        f"the model in {folder} (model_type '{model_type}') is not an image-to-text model this transformers"
        f" can generate text with (tried {', '.join(unrecognised) or 'no class'}). Use a captioning model such"
        f" as BLIP, GIT or Florence-2. {_version_hint()}"
    )


def _damaged_weight_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (
        OSError,
        KeyError,
        TypeError,
        ImportError,
        AttributeError,
        RuntimeError,
        SafetensorError,
        pickle.UnpicklingError,
    )


_DAMAGED_WEIGHT_ERRORS = _damaged_weight_errors()


def _can_generate(model: Any) -> bool:
    check = getattr(model, "can_generate", None)
    return bool(check()) if callable(check) else True


def _without_echoed_prompt(sequences: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
    """Decoder-only models return their input tokens before the new ones: keep only the new ones."""
    if (
        input_ids is None
        or sequences.shape[1] <= input_ids.shape[1]
        or sequences.shape[0] != input_ids.shape[0]
    ):
        return sequences
    length = input_ids.shape[1]
    if torch.equal(sequences[:, :length].to(input_ids.device), input_ids):
        return sequences[:, length:]
    return sequences
