"""Write the fixed corpus spec set into ckpt_compat/corpus/ (run once; the JSON is committed).

Hand-picked edge cases plus a set drawn by the strategies with a fixed seed. Stored as JSON so the
corpus does not change when hypothesis or the strategies change. Re-running rewrites the files;
only do it deliberately (committed fixtures are checked against these specs by id).

    python scripts/make_corpus_specs.py
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

from ckpt_compat import dtypes
from ckpt_compat.specs import ModelSpec
from ckpt_compat.strategies import model_specs

OUT = Path(__file__).parents[1] / "ckpt_compat" / "corpus"


def layer(kind: str, dtype: str = "float32", **args: object) -> dict[str, object]:
    return {"kind": kind, "args": args, "dtype": dtype}


def spec(children: dict[str, object], seed: int, fill: str = "values", **extra: object) -> dict[str, object]:
    return {"seed": seed, "fill": fill, "root": {"kind": "dict", "children": children}, **extra}


def bag(*tensors: dict[str, object]) -> dict[str, object]:
    return {"kind": "tensors", "tensors": list(tensors)}


def hand_picked() -> dict[str, dict[str, object]]:
    # Only kwargs that every torch >= 2.0 accepts (no LayerNorm(bias=), no TransformerEncoderLayer(bias=)).
    layers = {
        "linear": layer("Linear", in_features=8, out_features=6),
        "conv1d": layer("Conv1d", in_channels=4, out_channels=4, kernel_size=3, groups=2),
        "conv2d": layer("Conv2d", in_channels=2, out_channels=4, kernel_size=3, padding=1),
        "conv3d": layer("Conv3d", in_channels=1, out_channels=2, kernel_size=2),
        "deconv": layer("ConvTranspose2d", in_channels=2, out_channels=3, kernel_size=2, stride=2),
        "bn1d": layer("BatchNorm1d", num_features=3),
        "bn2d": layer("BatchNorm2d", num_features=2, affine=False),
        "ln": layer("LayerNorm", normalized_shape=[3, 4]),
        "gn": layer("GroupNorm", num_groups=2, num_channels=4),
        "emb": layer("Embedding", num_embeddings=10, embedding_dim=4, padding_idx=0),
        "bag": layer("EmbeddingBag", num_embeddings=10, embedding_dim=3, mode="max"),
        "lstm": layer("LSTM", input_size=3, hidden_size=4, num_layers=2, proj_size=2, batch_first=True),
        "gru": layer("GRU", input_size=3, hidden_size=2, bidirectional=True, batch_first=True),
        "mha": layer(
            "MultiheadAttention", embed_dim=4, num_heads=2, kdim=3, vdim=5, add_bias_kv=True, batch_first=True
        ),
        "enc": layer(
            "TransformerEncoderLayer",
            d_model=4,
            nhead=2,
            dim_feedforward=8,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        ),
        "prelu": layer("PReLU", num_parameters=3),
        "drop": layer("Dropout", p=0.5),
    }
    specs = {
        "layers-float32": spec(layers, 101),
        "layers-float64": spec({k: {**v, "dtype": "float64"} for k, v in layers.items()}, 102),
        "layers-bfloat16": spec({k: {**v, "dtype": "bfloat16"} for k, v in layers.items()}, 103),
        "layers-float16": spec({k: {**v, "dtype": "float16"} for k, v in layers.items()}, 104),
        "tied": spec(
            {
                "lm": {
                    "kind": "dict",
                    "children": {
                        "embed": layer("Embedding", num_embeddings=16, embedding_dim=8),
                        "head": layer("Linear", in_features=8, out_features=16),
                    },
                }
            },
            105,
            ties=[{"source": "lm.embed.weight", "target": "lm.head.weight"}],
        ),
        "layouts": spec(
            {
                "t": bag(
                    {
                        "name": "transposed",
                        "role": "parameter",
                        "dtype": "float32",
                        "shape": [3, 5],
                        "layout": "transposed",
                    },
                    {"name": "strided", "role": "buffer", "dtype": "int64", "shape": [4, 3], "layout": "strided"},
                    {
                        "name": "channels_last",
                        "role": "buffer",
                        "dtype": "float32",
                        "shape": [2, 3, 2, 2],
                        "layout": "channels_last",
                    },
                    {"name": "scalar", "role": "parameter", "dtype": "float64", "shape": []},
                    {"name": "empty", "role": "buffer", "dtype": "float32", "shape": [0, 4]},
                    {"name": "nothing", "role": "buffer", "none": True},
                    {"name": "hidden", "role": "buffer", "dtype": "float32", "shape": [4], "persistent": False},
                    {"name": "base", "role": "buffer", "dtype": "float32", "shape": [4, 4]},
                    {"name": "alias", "role": "buffer", "view_of": "base", "view": "alias"},
                    {"name": "offset", "role": "buffer", "view_of": "base", "view": "offset"},
                    {"name": "transpose", "role": "buffer", "view_of": "base", "view": "transpose"},
                )
            },
            106,
        ),
        "bits": spec(
            {
                "t": bag(
                    *[
                        {"name": f"t_{d}", "role": "buffer", "dtype": d, "shape": [4, 8]}
                        for d in ("float32", "float64", "float16", "bfloat16", "complex64", "complex128")
                    ]
                )
            },
            107,
            fill="bits",
        ),
        "weight-norm": spec(
            {"fc": layer("Linear", in_features=4, out_features=3)},
            108,
            parametrizations=[{"module": "fc", "tensor": "weight", "kind": "weight_norm"}],
        ),
        "spectral-norm": spec(
            {"conv": layer("Conv2d", in_channels=2, out_channels=3, kernel_size=3)},
            109,
            parametrizations=[{"module": "conv", "tensor": "weight", "kind": "spectral_norm"}],
        ),
        "nested": spec(
            {
                "seq": {
                    "kind": "sequential",
                    "input": [4],
                    "children": [
                        layer("Linear", in_features=4, out_features=5),
                        layer("PReLU"),
                        layer("LayerNorm", normalized_shape=[5]),
                    ],
                },
                "list": {
                    "kind": "list",
                    "children": [
                        layer("Linear", in_features=2, out_features=2),
                        bag({"name": "p", "role": "parameter", "dtype": "float32", "shape": [2]}),
                    ],
                },
                "dict": {
                    "kind": "dict",
                    "children": {
                        "inner": {
                            "kind": "dict",
                            "children": {"gru": layer("GRU", input_size=2, hidden_size=2, batch_first=True)},
                        }
                    },
                },
            },
            110,
        ),
    }
    for i, d in enumerate(dtypes.CATALOGUE):
        role = "parameter" if d.kind in ("float", "complex") and d.exact_values else "buffer"
        specs[f"dtype-{d.name}"] = spec(
            {"t": bag({"name": "x", "role": role, "dtype": d.name, "shape": [3, 5]})}, 200 + i, fill="bits"
        )
    return specs


def drawn(count: int = 8) -> dict[str, dict[str, object]]:
    found: list[ModelSpec] = []

    @seed(20261125)
    @settings(max_examples=count * 4, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck))
    @given(model_specs())
    def collect(s: ModelSpec) -> None:
        if len(found) < count and len(s.dumps()) > 400:  # skip the trivially small first draws
            found.append(s)

    collect()
    return {f"drawn-{i:02d}": s.to_json() for i, s in enumerate(found)}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.json"):
        old.unlink()
    for name, raw in {**hand_picked(), **drawn()}.items():
        s = ModelSpec.from_json(raw)
        (OUT / f"{name}.json").write_text(s.dumps() + "\n")
    print(f"wrote {len(list(OUT.glob('*.json')))} specs to {OUT}")


if __name__ == "__main__":
    main()
