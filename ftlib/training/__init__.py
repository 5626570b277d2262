"""Training: the book's loop and the fast one, mixed precision, pretraining the tiny base, DPO.

The names the notebooks use, from the modules of this folder (ftlib's own code
imports each from its module).
"""

from ftlib.training.book import (calc_loss_batch, calc_loss_loader, evaluate_model,
                                 plot_losses, read_history, train_model_simple)  # noqa: F401
from ftlib.training.precision import (autocast_dtype_for, cpu_has_bf16_units, enable_tf32,
                                      mixed_precision_default)  # noqa: F401
from ftlib.training.loop import (accumulate_gradients, batch_loss, compile_model, loss_loader,
                                 make_optimizer, padding_tokens, split_batch, train_model,
                                 warmup_cosine_schedule)  # noqa: F401
from ftlib.training.pretrain import (CORPUS_PATH, corpus_sha256, corpus_token_ids,
                                     fact_completion, load_facts,
                                     new_base_model, pretrain)  # noqa: F401
from ftlib.training.dpo import (answer_in, dpo_batch, dpo_loss, dpo_stats, frozen_reference,
                                is_full_sentence, load_preference_data, make_preference_pair,
                                plot_dpo_history, preference_collate_fn, preference_loaders,
                                preference_scores, PreferenceDataset, sequence_logprobs,
                                train_dpo)  # noqa: F401
