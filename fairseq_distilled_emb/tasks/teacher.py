"""The teacher checkpoint: read with the same safe loader and error wording as the CLI, checked
against the student's data and shape before any work (one clear error per problem), and built
frozen. The reconstruction-init tasks orchestrate; this module knows what a usable teacher is."""

import logging
import os
from typing import Dict, List, Optional, Tuple

from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from omegaconf import OmegaConf

from fairseq_distilled_emb.checkpoints import adaptive_input_bands, config_value, load_checkpoint
from fairseq_distilled_emb.errors import DistilledEmbeddingError
from fairseq_distilled_emb.modules import compressed_keys, saved_compressed_embeddings

logger = logging.getLogger(__name__)

# Architecture fields whose teacher and student values must agree for the weight copy to be exact.
ARCHITECTURE_FIELDS = (
    "encoder_embed_dim",
    "encoder_ffn_embed_dim",
    "encoder_layers",
    "encoder_attention_heads",
    "decoder_embed_dim",
    "decoder_ffn_embed_dim",
    "decoder_layers",
    "decoder_attention_heads",
    # same shapes, different network: a pre-norm student must not copy a post-norm teacher
    "encoder_normalize_before",
    "decoder_normalize_before",
    "activation_fn",
    "no_scale_embedding",
    "layernorm_embedding",
)
SHARING_FIELDS = ("share_all_embeddings", "share_decoder_input_output_embed")



class TeacherCheckpoint:
    """A teacher checkpoint file, loaded safely on construction."""

    def __init__(self, path: Optional[str], task: str):
        """``task``: how the errors name the command's task (``--task translation_...``)."""
        self.path = path
        if not path:
            raise DistilledEmbeddingError(
                f"{task} needs --teacher-path: the trained teacher checkpoint "
                "(e.g. checkpoints/teacher/checkpoint_best.pt) whose embedding is reconstructed"
            )
        if not os.path.isfile(path):
            raise DistilledEmbeddingError(
                f"--teacher-path {path}: no such file; train the teacher first or fix the path"
            )
        # our own loader, explicitly weights_only=True: fairseq's load_checkpoint_to_cpu follows
        # torch's default, which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns into full unpickling
        state = load_checkpoint(path, label=f"--teacher-path {path}")
        # then what fairseq's loader does after torch.load: the config as OmegaConf, old layouts
        # upgraded (an args-only checkpoint gets its cfg)
        if state.get("cfg") is not None:
            state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
        self.state = checkpoint_utils._upgrade_state_dict(state)

    def validate(self, student_cfg, dictionaries: List[Dict], vocabulary: int, data: str,
                 architecture_fields: Tuple[str, ...]) -> None:
        """The teacher fits the student: its vocabulary (size, and symbols where its data
        directory is reachable), its shape and its embedding sharing.

        ``dictionaries``: ``[{"dictionary", "lang" or "file"}]`` of the student's data.
        """
        path, state = self.path, self.state
        teacher_cfg = state["cfg"]["model"]
        if adaptive_input_bands(state["model"]):
            raise DistilledEmbeddingError(
                f"--teacher-path {path} has adaptive input (fairseq's --adaptive-input): its bands "
                "are not one V×d embedding to factorize; pass a teacher with a tied dense "
                "embedding (--share-decoder-input-output-embed)")
        embedding_rows = _teacher_embedding_rows(state["model"], teacher_cfg)
        if embedding_rows is None and not compressed_keys(state["model"]):
            raise DistilledEmbeddingError(
                f"--teacher-path {path} has no token embedding (decoder.embed_tokens): it is not a "
                "transformer translation/language model checkpoint"
            )
        if embedding_rows is not None and embedding_rows != vocabulary:
            raise DistilledEmbeddingError(
                f"--teacher-path {path} has a {embedding_rows}-symbol dictionary but the data "
                f"({data}) has {vocabulary}: binarize the student's data with the teacher's "
                "dictionary (fairseq-preprocess --srcdict/--tgtdict) or use the matching teacher"
            )
        self._validate_symbols(dictionaries)
        teacher_sharing, student_sharing = _sharing(teacher_cfg), _sharing(student_cfg)
        for name in architecture_fields + SHARING_FIELDS:
            teacher_value = teacher_sharing.get(name, config_value(teacher_cfg, name))
            student_value = student_sharing.get(name, config_value(student_cfg, name))
            if teacher_value is None or student_value is None:
                continue
            if teacher_value != student_value:
                flag = "--" + name.replace("_", "-")
                raise DistilledEmbeddingError(
                    f"--teacher-path {path} was trained with {name}={teacher_value} but the "
                    f"student has {flag} {student_value}: set {flag} to match the teacher "
                    "(the student copies the teacher's weights)"
                )

    def _validate_symbols(self, dictionaries: List[Dict]) -> None:
        """Compare dictionaries symbol by symbol when the teacher's data directory is reachable."""
        data = config_value(self.state["cfg"]["task"], "data")
        if not data:
            return
        for dictionary in dictionaries:
            filename = dictionary.get("file") or f"dict.{dictionary['lang']}.txt"
            candidate = os.path.join(str(data).split(":")[0], filename)
            if not os.path.isfile(candidate):
                logger.warning(
                    f"teacher dictionary {candidate} not found: checked the size only"
                )
                continue
            teacher_dictionary = Dictionary.load(candidate)
            if teacher_dictionary.symbols != dictionary["dictionary"].symbols:
                raise DistilledEmbeddingError(
                    f"--teacher-path {self.path}: its dictionary {candidate} differs "
                    f"from this data's {filename} (same size, different symbols): binarize "
                    f"with fairseq-preprocess --srcdict/--tgtdict {candidate}"
                )

    def build(self, task):
        """The teacher model, built by fairseq for ``task``, in eval mode with no gradients."""
        models, _ = checkpoint_utils.load_model_ensemble([self.path], task=task, state=self.state)
        teacher = models[0]
        teacher.eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
        teacher_params = sum(p.numel() for p in teacher.parameters())
        logger.info(f"loaded frozen teacher {self.path} ({teacher_params:,} params)")
        return teacher


def _teacher_embedding_rows(model_state, model_cfg) -> Optional[int]:
    """V of the teacher's (decoder) token embedding, dense or compressed; None: none found."""
    if "decoder.embed_tokens.weight" in model_state:
        return model_state["decoder.embed_tokens.weight"].shape[0]
    kind, modules = saved_compressed_embeddings(model_state, model_cfg)
    if "decoder.embed_tokens" not in modules:
        return None
    return kind.saved_size(modules["decoder.embed_tokens"], model_cfg)["vocab"]


def _sharing(cfg):
    """Effective embedding sharing: --share-all-embeddings implies decoder input/output sharing."""
    share_all = bool(config_value(cfg, "share_all_embeddings"))
    share_decoder = share_all or bool(config_value(cfg, "share_decoder_input_output_embed"))
    return {"share_all_embeddings": share_all, "share_decoder_input_output_embed": share_decoder}

