"""The artifact: a folder holding what a method changed or added, verified on load.

Layout::

    veil.json            # manifest: format_version, method, config, concepts, base_model, cost, tensors
    model.safetensors    # only changed/added tensors, keys prefixed by component; header repeats the manifest

``load_artifact(path).attach(pipe)`` refuses a pipeline of another base model, a weights file
that does not match the manifest, and a format version it does not know — each in one sentence.
"""

import datetime
import hashlib
import json
import os

from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file

from . import __version__
from ._io import atomic_dir, atomic_file, recover
from .errors import VeilError
from .models import model_fingerprint
from .registry import get_method

FORMAT_VERSION = 1
MANIFEST_NAME = "veil.json"
WEIGHTS_NAME = "model.safetensors"


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Artifact:
    """A trained (or configured) method, apart from the base model it was made for.

    Example:
        >>> artifact = veil.load_artifact("erased/")
        >>> artifact.attach(pipe)        # the pipeline now draws without the concept
        >>> artifact.detach(pipe)        # bit-for-bit the original again
    """

    def __init__(self, manifest, tensors):
        self.manifest = manifest
        self.tensors = tensors
        self.extra_files = {}
        self._method = None

    # construction ---------------------------------------------------------------------------------
    @classmethod
    def from_method(cls, method, pipe, cost=None):
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in method.state_dict().items()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "method": method.name,
            "config": method.config.to_dict(),
            "concepts": list(method.config.concepts),
            # Without a pipeline (weights imported from another layout) the base model is unknown.
            "base_model": {
                "name": getattr(pipe, "veil_model_name", None) or getattr(pipe, "name_or_path", None),
                "fingerprint": model_fingerprint(pipe.unet) if pipe is not None else None,
            },
            "veil_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cost": dict(cost or {}),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in tensors.items()},
        }
        manifest.update(method.extra_manifest())
        artifact = cls(manifest, tensors)
        artifact._method = method
        artifact.extra_files = dict(method.extra_files())
        return artifact

    @property
    def method_name(self):
        return self.manifest["method"]

    @property
    def concepts(self):
        return self.manifest["concepts"]

    @property
    def fingerprint(self):
        return self.manifest["base_model"]["fingerprint"]

    def size_bytes(self):
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    # persistence ------------------------------------------------------------------------------------
    def save(self, path, overwrite=False):
        """Write the folder atomically; refuses an existing ``path`` unless ``overwrite``."""
        with atomic_dir(path, overwrite=overwrite) as tmp:
            header = {"veil_manifest": json.dumps(self.manifest, sort_keys=True)}
            weights = os.path.join(tmp, WEIGHTS_NAME)
            # Written straight from the tensors: a bytes copy of the whole file would raise the run's peak memory.
            save_file(self.tensors, weights, metadata=header)
            for name, data in self.extra_files.items():
                with open(os.path.join(tmp, os.path.basename(name)), "wb") as handle:
                    handle.write(data)
            manifest = dict(self.manifest, weights_sha256=_sha256_file(weights))
            with open(os.path.join(tmp, MANIFEST_NAME), "w") as handle:
                json.dump(manifest, handle, indent=2)
                handle.write("\n")
            self.manifest = manifest
        return path

    @classmethod
    def load(cls, path):
        """Read and verify an artifact folder (first putting back one whose replacement a killed save interrupted)."""
        recover(path)
        manifest_path = os.path.join(path, MANIFEST_NAME)
        weights_path = os.path.join(path, WEIGHTS_NAME)
        if os.path.exists(path) and not os.path.isdir(path):
            raise VeilError(f"Artifact {path!r} is a file, not a folder; pass the folder written by veil erase or veil hide.")
        if not os.path.isdir(path):
            raise VeilError(f"Artifact {path!r} does not exist; pass the folder written by veil erase or veil hide.")
        if not os.path.isfile(manifest_path):
            raise VeilError(f"{path!r} is not a veil artifact (it has no {MANIFEST_NAME}); pass the folder written by veil erase or veil hide.")
        try:
            with open(manifest_path) as handle:
                manifest = json.load(handle)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise VeilError(f"The manifest {manifest_path!r} is not readable JSON ({error}); the artifact is damaged — make it again.") from None
        if not isinstance(manifest, dict):
            raise VeilError(f"The manifest {manifest_path!r} holds a JSON {type(manifest).__name__}, not an object; the artifact is damaged — make it again.")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise VeilError(
                f"{path!r} has artifact format version {version!r}, which this veil ({__version__}) does not know "
                f"(it reads version {FORMAT_VERSION}); upgrade veil or remake the artifact."
            )
        # weights_sha256 is required: without it the checksum check below could be switched off by deleting a line.
        for key in ("method", "config", "concepts", "base_model", "tensors", "weights_sha256"):
            if key not in manifest:
                raise VeilError(f"The manifest {manifest_path!r} lacks the field {key!r}; the artifact is damaged — make it again.")
        get_method(manifest["method"])  # unknown method: one sentence with "did you mean"
        if not os.path.isfile(weights_path):
            raise VeilError(f"{path!r} has no {WEIGHTS_NAME}; the artifact is incomplete — make it again.")
        if _sha256_file(weights_path) != manifest["weights_sha256"]:
            raise VeilError(f"{weights_path!r} is corrupted or truncated (its checksum does not match the manifest); make the artifact again.")
        try:
            tensors = {}
            with safe_open(weights_path, framework="pt") as handle:
                for name in handle.keys():
                    tensors[name] = handle.get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise VeilError(f"{weights_path!r} is not a readable safetensors file ({error}); make the artifact again.") from None
        listed = manifest["tensors"]
        if set(listed) != set(tensors):
            missing = sorted(set(listed) ^ set(tensors))
            raise VeilError(f"{weights_path!r} does not hold the tensors its manifest lists (first difference: {missing[0]!r}); make the artifact again.")
        for name, info in listed.items():
            if list(tensors[name].shape) != list(info["shape"]):
                raise VeilError(
                    f"Tensor {name!r} has shape {list(tensors[name].shape)} but the manifest says {info['shape']}; make the artifact again."
                )
        return cls(manifest, tensors)

    # use ---------------------------------------------------------------------------------------------
    def check_base(self, pipe):
        if self.fingerprint is None:  # imported weights: the method checks every tensor's shape on attach
            return
        actual = model_fingerprint(pipe.unet)
        if actual != self.fingerprint:
            base = self.manifest["base_model"].get("name")
            raise VeilError(
                f"This artifact was made for base model {base!r} (fingerprint {self.fingerprint[:12]}), but the loaded "
                f"model's fingerprint is {actual[:12]}; load the artifact's base model with --model."
            )

    def build_method(self):
        """The method instance, configured and holding the stored tensors."""
        if self._method is None:
            cls = get_method(self.method_name)
            # A stored timestep_mapping chose how training paired latents with timesteps; ESD sampling now has one
            # pairing, and the field never changes what the stored weights do.
            config = {k: v for k, v in self.manifest["config"].items() if k != "timestep_mapping"}
            method = cls(cls.config_class.from_dict(config))
            method.load_state_dict(dict(self.tensors))
            self._method = method
        return self._method

    def attach(self, pipe):
        """Install into ``pipe`` after checking it is the base model; returns the method."""
        if self._method is not None and self._method.attached_to is pipe:
            return self._method
        self.check_base(pipe)
        method = self.build_method()
        method.attach(pipe)
        return method

    def detach(self, pipe):
        if self._method is not None:
            self._method.detach(pipe)

    # exports -----------------------------------------------------------------------------------------
    def check_export(self, what="a diffusers pipeline folder"):
        """Refuse, in one sentence, a method whose effect ``what`` cannot hold (DuMo, SLD): exporting the base
        model's weights unchanged would look like success."""
        reason = get_method(self.method_name).pipeline_export_refusal
        if reason:
            raise VeilError(
                f"A {self.method_name} artifact {reason}, which {what} cannot hold; use the artifact folder itself "
                "(--artifact with veil generate or veil eval, or veil.load_artifact(path).attach(pipe))."
            )

    def export_pipeline(self, pipe, out_dir, overwrite=False):
        """A full diffusers pipeline folder with the change baked in (weight-editing methods)."""
        self.check_export()
        method = self.attach(pipe)
        try:
            with atomic_dir(out_dir, overwrite=overwrite) as tmp:
                pipe.save_pretrained(tmp, safe_serialization=True)
        finally:
            method.detach(pipe)
        return out_dir

    def export_unet_state_dict(self, path, overwrite=False):
        """The ESD/UCE-style partial UNet state dict: ``unet.load_state_dict(sd, strict=False)`` loads it."""
        self.check_export("a UNet state dict")
        non_unet = sorted(k for k in self.tensors if not k.startswith("unet."))
        if non_unet:
            raise VeilError(
                f"A {self.method_name} artifact adds modules besides UNet weights ({non_unet[0]!r}); export it as a pipeline folder instead."
            )
        state = {k[len("unet."):]: v.contiguous() for k, v in self.tensors.items()}
        with atomic_file(path, overwrite=overwrite) as handle:
            handle.write(safetensors_bytes(state, metadata={"veil_method": self.method_name, "base_fingerprint": self.fingerprint}))
        return path


def load_artifact(path):
    """Load and verify an artifact folder. See :class:`Artifact`."""
    return Artifact.load(path)
