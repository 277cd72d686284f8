"""Tiny captioner models built on the spot, for tests and demos: nothing is downloaded.

- ``build_tiny_tagger(folder)``: a WD14-style tagger folder (``model.onnx`` exported from a small
  torch model with ``torch.onnx.export`` + ``selected_tags.csv``). Its weights are set by hand so
  that the answer is known: it averages the image's B, G, R channels (WD taggers get BGR) and scores
  colour tags from them, plus fixed-confidence tags to test thresholds and ordering
  (``EXPECTED_SCORES``).
- ``build_tiny_blip(folder)``: a ~10k-parameter ``BlipForConditionalGeneration`` with its processor
  (BERT tokenizer over a ten-word vocabulary) saved with ``save_pretrained``; its output bias makes it
  write ``word`` again and again.
- ``build_tiny_vit_gpt2(folder)``: a ``VisionEncoderDecoderModel`` (tiny ViT + tiny GPT-2) with an
  image processor and a GPT-2 tokenizer but no joint processor, like nlpconnect/vit-gpt2 captioners.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import torch

TAGGER_SIZE = 32
# (name, category, logit weights on the channel means (B, G, R) in 0..1, logit bias)
_TAGGER_TAGS: list[tuple[str, int, tuple[float, float, float], float]] = [
    ("general", 9, (0, 0, 0), 3.0),  # rating: the surest tag of all, never output
    ("sensitive", 9, (0, 0, 0), -3.0),
    ("questionable", 9, (0, 0, 0), -4.0),
    ("explicit", 9, (0, 0, 0), -5.0),
    ("red_background", 0, (-10, -10, 10), -5.0),
    ("green_background", 0, (-10, 10, -10), -5.0),
    ("blue_background", 0, (10, -10, -10), -5.0),
    ("white_background", 0, (10, 10, 10), -25.0),
    ("simple_background", 0, (0, 0, 0), 2.1972246),  # 0.9
    ("solo", 0, (0, 0, 0), 0.8472979),  # 0.7
    ("looking_at_viewer", 0, (0, 0, 0), 0.0),  # 0.5
    ("smile", 0, (0, 0, 0), -0.4054651),  # 0.4
    ("open_mouth", 0, (0, 0, 0), -0.5753641),  # 0.36
    ("blush", 0, (0, 0, 0), -0.8472979),  # 0.3
    ("hatsune_miku", 4, (-10, 10, -10), -5.0),  # character: sure on green images
    ("kasane_teto", 4, (0, 0, 0), 1.3862944),  # character at 0.8: below the character threshold
]
# Confidences of the fixed tags (whatever the image).
EXPECTED_SCORES = {
    "general": 0.9526, "simple_background": 0.9, "solo": 0.7, "looking_at_viewer": 0.5, "smile": 0.4,
    "open_mouth": 0.36, "blush": 0.3, "kasane_teto": 0.8,
}  # fmt: skip


class _ColourTagger(torch.nn.Module):
    """NHWC 0..255 BGR images -> sigmoid scores: mean colour, one linear layer, sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.scores = torch.nn.Linear(3, len(_TAGGER_TAGS))
        with torch.no_grad():
            self.scores.weight.copy_(torch.tensor([weights for _, _, weights, _ in _TAGGER_TAGS]))
            self.scores.bias.copy_(torch.tensor([bias for *_, bias in _TAGGER_TAGS]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        means = images.mean(dim=(1, 2)) / 255.0
        return torch.sigmoid(self.scores(means))


def build_tiny_tagger(folder: Path, size: int = TAGGER_SIZE, dynamic_batch: bool = True) -> Path:
    """Write ``model.onnx`` (input ``[batch, size, size, 3]``) and ``selected_tags.csv`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = _ColourTagger().eval()
    example = torch.zeros(1, size, size, 3)
    with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript, and says it is old
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(folder / "model.onnx"),
            input_names=["input_1:0"],
            output_names=["predictions_sigmoid"],
            dynamic_axes={"input_1:0": {0: "batch"}, "predictions_sigmoid": {0: "batch"}}
            if dynamic_batch
            else None,
            dynamo=False,
        )
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category, _, _) in enumerate(_TAGGER_TAGS):
            writer.writerow([1000 + index, name, category, 100 - index])
    return folder


BLIP_WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[DEC]",
    "a",
    "picture",
    "of",
    "red",
    "square",
    "blue",
    "circle",
]


def build_tiny_blip(folder: Path, word: str = "square", seed: int = 0) -> Path:
    """A tiny BLIP captioner (processor + model) in ``folder`` that writes ``word`` over and over."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(BLIP_WORDS)}
    tokenizer = _bert_tokenizer(BertTokenizer, vocab, folder)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = BlipConfig(
        text_config=dict(
            tiny, vocab_size=len(vocab), encoder_hidden_size=16, max_position_embeddings=64,
            bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"],
            eos_token_id=vocab["[SEP]"],
        ),
        vision_config=dict(tiny, image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[vocab[word]] = 50.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_vit_gpt2(folder: Path, word: str = "square", seed: int = 0) -> Path:
    """A tiny ViT + GPT-2 ``VisionEncoderDecoderModel`` that writes ``word`` over and over; its folder has
    an image processor and a tokenizer but no processor joining them."""
    from transformers import (
        GPT2Config,
        GPT2Tokenizer,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|endoftext|>", "a", "Ġa", "Ġred", "Ġsquare", "Ġblue", "Ġcircle", "Ġ"]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = _gpt2_tokenizer(GPT2Tokenizer, vocab, folder)
    encoder = ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )
    decoder = GPT2Config(
        vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=64, add_cross_attention=True,
        is_decoder=True, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = 0
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config).eval()
    with torch.no_grad():  # constant final hidden state, aligned with the word's (tied) embedding
        gpt2 = model.decoder.transformer
        gpt2.ln_f.weight.zero_()
        gpt2.ln_f.bias.fill_(1.0)
        gpt2.wte.weight.mul_(0.01)
        gpt2.wte.weight[vocab["Ġ" + word]] = 1.0
    model.generation_config.decoder_start_token_id = 0
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _bert_tokenizer(tokenizer_class: type, vocab: dict[str, int], folder: Path):  # type: ignore[no-untyped-def]
    try:  # transformers 5: the vocabulary itself
        return tokenizer_class(vocab=vocab)
    except TypeError:  # transformers 4: a vocab.txt file
        vocab_file = folder / "vocab.txt"
        vocab_file.write_text("\n".join(sorted(vocab, key=vocab.__getitem__)) + "\n", encoding="utf-8")
        return tokenizer_class(vocab_file=str(vocab_file))


def _gpt2_tokenizer(tokenizer_class: type, vocab: dict[str, int], folder: Path):  # type: ignore[no-untyped-def]
    try:
        return tokenizer_class(vocab=vocab, merges=[])
    except TypeError:
        import json

        (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return tokenizer_class(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
