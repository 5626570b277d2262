"""The model: GPT-2's architecture and configs, its weights (OpenAI's, Hugging Face's), generation, LoRA, model files.

The names the notebooks use, from the modules of this folder (ftlib's own code
imports each from its module).
"""

from ftlib.model.gpt import (BASE_CONFIG, count_parameters, FeedForward, format_memory_table,
                             get_config, GPTModel, LayerNorm, model_configs,
                             model_memory_table, MultiHeadAttention, TransformerBlock)  # noqa: F401
from ftlib.model.gpt2_names import GPT2_NAMES, gpt_to_params  # noqa: F401
from ftlib.model.weights import (ALLOWED_SIZES, config_from_settings, download_and_load_gpt2,
                                 load_gpt2_params, load_hf_safetensors_into_gpt,
                                 load_weights_into_gpt)  # noqa: F401
from ftlib.model.generate import generate, text_to_token_ids, token_ids_to_text  # noqa: F401
from ftlib.model.lora import (add_lora, count_lora_parameters, count_trainable_parameters,
                              format_lora_parameter_table, has_lora, LinearWithLoRA,
                              lora_parameter_table, LoRALayer, merge_lora,
                              replace_linear_with_lora)  # noqa: F401
from ftlib.model.files import load_model_state, load_run_model, save_model, sft_file_name  # noqa: F401
from ftlib.model.base import load_base_model  # noqa: F401
