import json

import pytest

from moejit.bench import models
from moejit.bench.models import ModelError, ModelShape, get_model, load_config, resolve_models

SEED = {  # vLLM WEIGHT_SHAPES_MOE GEMM1 entries [E, topk, K, 2N]
    "mixtral-8x7b": (8, 2, 4096, 28672),
    "deepseek-v2": (160, 6, 5120, 12288),
    "custom-small": (8, 2, 2048, 7168),
    "glm45-fp8": (128, 8, 4096, 2816),
    "Llama-4-Maverick-17B-128E-Instruct-FP8": (128, 1, 5120, 16384),
}


@pytest.mark.parametrize("name", list(SEED))
def test_seed_models_keep_seed_numbers(name):
    e, topk, k, two_n = SEED[name]
    m = get_model(name)
    assert (m.num_experts, m.topk, m.hidden, 2 * m.intermediate) == (e, topk, k, two_n)


def test_registry_has_todays_models_and_lookup_is_case_insensitive():
    for name in ("deepseek-v3", "qwen3-30b-a3b", "qwen3-235b-a22b", "qwen3.6-35b-a3b", "gpt-oss-120b", "kimi-k2",
                 "mixtral-8x22b", "llama-4-scout"):
        assert get_model(name).name == name
    assert get_model("DeepSeek-V3") == get_model("deepseek-v3")
    assert get_model("llama-4-maverick-17b-128e-instruct-fp8").topk == 1
    q = get_model("qwen3.6-35b-a3b")
    assert (q.num_experts, q.topk, q.hidden, q.intermediate) == (256, 8, 2048, 512)


def test_unknown_model_lists_names():
    with pytest.raises(ModelError) as info:
        get_model("nope-7b")
    assert "nope-7b" in str(info.value) and "mixtral-8x7b" in str(info.value) and "kimi-k2" in str(info.value)


def test_shard_divides_intermediate_and_rejects_non_divisors():
    m = get_model("deepseek-v3").shard(8)
    assert m.intermediate == 256 and m.tp == 8 and m.hidden == 7168 and m.num_experts == 256
    assert m.shard(2).tp == 16 and m.shard(2).intermediate == 128
    assert get_model("gpt-oss-120b").shard(16).intermediate == 180
    with pytest.raises(ModelError) as info:
        get_model("gpt-oss-120b").shard(7)
    assert "gpt-oss-120b" in str(info.value) and "TP=7" in str(info.value)
    with pytest.raises(ModelError):
        get_model("mixtral-8x7b").shard(0)


def test_shape_math():
    m = ModelShape("x", 4, 2, 16, 8)
    assert m.weight_elements() == 4 * 3 * 8 * 16
    assert m.flops(3) == 2 * 3 * 2 * (16 * 16 + 8 * 16)
    with pytest.raises(ModelError):
        ModelShape("bad", 2, 3, 16, 8)


def _write(tmp_path, cfg, name="config.json", folder="MyOrg-Model"):
    d = tmp_path / folder
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text(json.dumps(cfg))
    return p


CONFIGS = {
    "mixtral": ({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_size": 4096,
                 "intermediate_size": 14336}, (8, 2, 4096, 14336)),
    "deepseek": ({"model_type": "deepseek_v3", "n_routed_experts": 256, "num_experts_per_tok": 8,
                  "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048},
                 (256, 8, 7168, 2048)),
    "qwen3moe": ({"model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8, "hidden_size": 2048,
                  "intermediate_size": 6144, "moe_intermediate_size": 768}, (128, 8, 2048, 768)),
    "llama4": ({"model_type": "llama4", "text_config": {"num_local_experts": 16, "num_experts_per_tok": 1,
                                                        "hidden_size": 5120, "intermediate_size": 8192,
                                                        "intermediate_size_mlp": 16384}},
               (16, 1, 5120, 8192)),
    "gptoss": ({"model_type": "gpt_oss", "num_local_experts": 128, "experts_per_token": 4, "hidden_size": 2880,
                "intermediate_size": 2880}, (128, 4, 2880, 2880)),
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_config_json_parsing(tmp_path, kind):
    cfg, want = CONFIGS[kind]
    m = load_config(_write(tmp_path, cfg))
    assert (m.num_experts, m.topk, m.hidden, m.intermediate) == want
    assert m.name == "MyOrg-Model" and m.source.endswith("config.json")


def test_config_name_from_name_or_path_and_folder_and_resolve(tmp_path):
    cfg = dict(CONFIGS["mixtral"][0], _name_or_path="org/mixy")
    p = _write(tmp_path, cfg, name="mixy.json")
    assert load_config(p).name == "org/mixy"
    p2 = _write(tmp_path, CONFIGS["gptoss"][0], folder="oss")
    assert load_config(p2.parent).name == "oss"
    shapes = resolve_models(["Mixtral-8x7B", str(p2), "mixtral-8x7b"])
    assert [s.name for s in shapes] == ["mixtral-8x7b", "oss"]


def test_config_errors(tmp_path):
    with pytest.raises(ModelError, match="no such config"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="cannot read JSON"):
        load_config(bad)
    with pytest.raises(ModelError, match="not an MoE config"):
        load_config(_write(tmp_path, {"hidden_size": 4096, "intermediate_size": 11008}, folder="dense"))
    with pytest.raises(ModelError, match="topk"):
        load_config(_write(tmp_path, {"num_local_experts": 8, "hidden_size": 8, "intermediate_size": 8},
                           folder="notopk"))
    with pytest.raises(ModelError, match="must be an integer"):
        load_config(_write(tmp_path, {"num_local_experts": 8, "num_experts_per_tok": "2", "hidden_size": 8,
                                      "intermediate_size": 8}, folder="strtopk"))


def test_default_model_is_seeds():
    assert models.DEFAULT_MODELS == ("mixtral-8x7b",)
