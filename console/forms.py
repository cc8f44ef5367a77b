"""Forms of the admin's write actions on a version and a change request.

Each form only renders and coerces; the request then goes through the REST API's own serializer (the same field
rules) and the same service function the API view calls, whose refusals land on the form next to their field.
"""
from django import forms

from foundation.errors import DomainError
from registry.models import Dataset, ModelVersion
from workers.pipelines.calibrated.spec import BITS, CALIBRATED_METHODS, GROUP_SIZES
from workers.pipelines.specs import METHODS, LoraSpec

LORA_DEFAULTS = LoraSpec()
# Leaf names of attention projections across the architectures workers.pipelines.lora adapts by default.
ATTENTION_PROJECTION_LEAVES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn", "query_key_value",
                               "out_proj")


def dataset_label(dataset: Dataset) -> str:
    """'#12 credit-eval (evaluation, 1,200 records)', with a warning when the scan found personal data."""
    personal_data = " · personal data found" if dataset.pii_status == Dataset.PiiStatus.FOUND else ""
    return f"#{dataset.pk} {dataset.name} ({dataset.purpose}, {dataset.records:,} records{personal_data})"


class DatasetChoiceField(forms.ModelChoiceField):
    """Any dataset is accepted (the service decides, with its own message); the list offers one purpose."""

    def __init__(self, *, purpose: str, **kwargs):
        super().__init__(queryset=Dataset.objects.order_by("-created_at", "-pk"), **kwargs)
        self.purpose = purpose

    def label_from_instance(self, dataset):
        return dataset_label(dataset)

    def offer_only_purpose(self) -> None:
        offered = [(d.pk, dataset_label(d)) for d in self.queryset.filter(purpose=self.purpose)]
        self.widget.choices = ([("", "— default —" if not self.required else "choose a dataset")] + offered)


def version_label(version: ModelVersion) -> str:
    return f"v{version.number} ({version.kind}){' · ' + version.description if version.description else ''}"


class VersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, version):
        return version_label(version)


def add_domain_error(form: forms.Form, error: DomainError, *, fields: dict[str, str] | None = None) -> None:
    """Show a service's refusal on the form: next to its field when it names one the form has."""
    field = (fields or {}).get(error.field, error.field)
    form.add_error(field if field in form.fields else None, error.message)


def add_serializer_errors(form: forms.Form, serializer_class, data: dict, *,
                          fields: dict[str, str] | None = None) -> dict | None:
    """Validate `data` with the API's serializer; its errors go onto the form. Returns the validated data."""
    serializer = serializer_class(data=data)
    if serializer.is_valid():
        return serializer.validated_data
    for name, messages in serializer.errors.items():
        field = (fields or {}).get(name, name)
        text = " ".join(str(message) for message in (messages if isinstance(messages, list) else [messages]))
        if field in form.fields:
            form.add_error(field, text)
        else:
            form.add_error(None, f"{name}: {text}")
    return None


class AnalysisStartForm(forms.Form):
    reference = VersionChoiceField(queryset=ModelVersion.objects.none(), required=False,
                                   empty_label="the version it was derived from",
                                   help_text="The version to compare against.")
    dataset = DatasetChoiceField(purpose=Dataset.Purpose.EVALUATION,
                                 help_text="An evaluation dataset: the texts both versions are scored on.")
    max_tokens = forms.IntegerField(initial=4096, min_value=1,
                                    help_text="Tokens of the dataset to score (16 to 1,000,000); more tokens, "
                                              "tighter uncertainty.")

    def __init__(self, *args, version: ModelVersion, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["reference"].queryset = (ModelVersion.objects.filter(model=version.model,
                                                                         status=ModelVersion.Status.READY)
                                             .exclude(pk=version.pk).order_by("-number"))
        self.fields["dataset"].offer_only_purpose()

    def api_payload(self) -> dict:
        data = self.cleaned_data
        payload = {"dataset": data["dataset"].pk, "max_tokens": data["max_tokens"]}
        if data.get("reference"):
            payload["reference"] = data["reference"].number
        return payload


class EvaluationStartForm(forms.Form):
    dataset = DatasetChoiceField(purpose=Dataset.Purpose.EVALUATION,
                                 help_text="A labelled evaluation dataset: multiple choice {prompt, choices, answer}, "
                                           "classification {text, label} or generation {prompt, answer} records.")
    reference = VersionChoiceField(queryset=ModelVersion.objects.none(), required=False,
                                   empty_label="none: evaluate this version alone",
                                   help_text="A version of the same model evaluated on the same records; the "
                                             "deltas are in percentage points.")
    limit = forms.IntegerField(required=False, min_value=1,
                               help_text="Evaluate only the first records (empty: all; the policy gates accept "
                                         "only whole-dataset evaluations).")

    def __init__(self, *args, version: ModelVersion, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["reference"].queryset = (ModelVersion.objects.filter(model=version.model,
                                                                         status=ModelVersion.Status.READY)
                                             .exclude(pk=version.pk).order_by("-number"))
        self.fields["dataset"].offer_only_purpose()

    def api_payload(self) -> dict:
        data = self.cleaned_data
        payload = {"dataset": data["dataset"].pk}
        if data.get("reference"):
            payload["reference"] = data["reference"].number
        if data.get("limit"):
            payload["limit"] = data["limit"]
        return payload


class BestCandidateChangeRequestForm(forms.Form):
    alias = forms.CharField(max_length=64, initial="production",
                            help_text="The alias of the student's model the candidate should serve as.")
    justification = forms.CharField(widget=forms.Textarea(attrs={"rows": 4, "cols": 80}), required=False,
                                    max_length=20_000, help_text="Approvers read it; prefilled with the "
                                                                 "distillation's figures.")


class RecommendedCandidateChangeRequestForm(forms.Form):
    alias = forms.CharField(max_length=64, initial="production",
                            help_text="The alias the recommended version should serve as; its gates are measured "
                                      "against the alias's current version on the sweep's evaluation dataset.")
    justification = forms.CharField(widget=forms.Textarea(attrs={"rows": 4, "cols": 80}), required=False,
                                    max_length=20_000, help_text="Approvers read it; prefilled with the sweep's "
                                                                 "figures.")


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


class LoraUpdateForm(forms.Form):
    dataset = DatasetChoiceField(purpose=Dataset.Purpose.TRAINING,
                                 help_text="A training dataset of prompt/completion records, free of personal data.")
    r = forms.IntegerField(label="Rank r", initial=LORA_DEFAULTS.r, help_text=f"default {LORA_DEFAULTS.r}")
    alpha = forms.FloatField(label="Alpha", initial=LORA_DEFAULTS.alpha,
                             help_text=f"default {LORA_DEFAULTS.alpha:g}; the update is scaled by alpha / r")
    steps = forms.IntegerField(label="Steps", initial=LORA_DEFAULTS.steps,
                               help_text=f"optimizer updates; default {LORA_DEFAULTS.steps}")
    learning_rate = forms.FloatField(label="Learning rate", initial=LORA_DEFAULTS.learning_rate,
                                     help_text=f"default {LORA_DEFAULTS.learning_rate:g}")
    target_modules = forms.CharField(required=False, label="Target modules")

    def __init__(self, *args, version: ModelVersion, module_names: set[str] = frozenset(), **kwargs):
        super().__init__(*args, **kwargs)
        leaves = {name.rsplit(".", 1)[-1] for name in module_names}
        defaults = [leaf for leaf in ATTENTION_PROJECTION_LEAVES if leaf in leaves]
        self.fields["target_modules"].help_text = (
            "Comma-separated layer names; empty: the architecture's attention projections"
            + (f" ({', '.join(defaults)} for this model)." if defaults else "."))
        self.fields["target_modules"].widget.attrs["placeholder"] = ", ".join(defaults) or "q_proj, v_proj"
        self.fields["dataset"].offer_only_purpose()

    def api_payload(self) -> dict:
        data = self.cleaned_data
        payload = {"dataset": data["dataset"].pk, "r": data["r"], "alpha": data["alpha"], "steps": data["steps"],
                   "learning_rate": data["learning_rate"]}
        if _comma_list(data.get("target_modules")):
            payload["target_modules"] = _comma_list(data["target_modules"])
        return payload


class CalibratedQuantizeForm(forms.Form):
    """GPTQ or AWQ on a calibration dataset: the settings of POST .../quantize with method gptq or awq."""

    method = forms.ChoiceField(choices=[(method, method.upper()) for method in CALIBRATED_METHODS])
    calibration_dataset = DatasetChoiceField(purpose=Dataset.Purpose.CALIBRATION,
                                             help_text="Domain text the method measures each layer's inputs on; "
                                                       "free of personal data, at least 8 records.")
    bits = forms.TypedChoiceField(coerce=int, initial=4, choices=[
        (bits, f"{bits}") for bits in sorted(set(BITS["gptq"]) | set(BITS["awq"]))],
        help_text="2, 3, 4 or 8 for GPTQ; 4 for AWQ.")
    group_size = forms.TypedChoiceField(coerce=int, initial=128, choices=[
        (size, "per output channel" if size == -1 else f"{size}") for size in GROUP_SIZES],
        help_text="Weights sharing one scale.")
    sym = forms.BooleanField(required=False, initial=True, label="Symmetric grid",
                             help_text="Only symmetric grids are written packed for vLLM and SGLang.")
    desc_act = forms.BooleanField(required=False, label="Act-order", help_text="GPTQ only.")
    damping = forms.FloatField(initial=0.01, help_text="GPTQ's damp_percent.")
    calibration_samples = forms.IntegerField(required=False, min_value=1,
                                             help_text="Empty: every record, at most 128.")
    max_length = forms.IntegerField(initial=512, help_text="Tokens per calibration sample.")
    skip_modules = forms.CharField(required=False, max_length=1000,
                                   help_text="A regular expression; empty: embeddings, norms and lm_head stay in "
                                             "full precision.")

    def __init__(self, *args, version: ModelVersion, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["calibration_dataset"].offer_only_purpose()

    def api_payload(self) -> dict:
        data = self.cleaned_data
        payload = {name: data[name] for name in ("method", "bits", "group_size", "sym", "desc_act", "damping",
                                                  "max_length")}
        payload["calibration_dataset"] = data["calibration_dataset"].pk
        if data.get("calibration_samples"):
            payload["calibration_samples"] = data["calibration_samples"]
        if data.get("skip_modules"):
            payload["skip_modules"] = data["skip_modules"]
        return payload


class QuantizationSweepStartForm(forms.Form):
    methods = forms.MultipleChoiceField(choices=[(method, method) for method in METHODS], initial=list(METHODS),
                                        widget=forms.CheckboxSelectMultiple, label="Candidates",
                                        help_text="One bitsandbytes quantization per method, skipping lm_head; "
                                                  "GPTQ/AWQ candidates through the API.")
    dataset = DatasetChoiceField(purpose=Dataset.Purpose.EVALUATION,
                                 help_text="An evaluation dataset: every candidate is analysed against this version "
                                           "on it.")
    alias = forms.CharField(max_length=64, required=False,
                            help_text="Whose policy gates the candidates (production, staging, ...); empty: the "
                                      "default gates.")
    max_tokens = forms.IntegerField(initial=4096, min_value=1, help_text="Tokens each analysis scores.")

    def __init__(self, *args, version: ModelVersion, alias_names: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["alias"].widget.attrs["list"] = "alias-names"
        self.alias_names = sorted(set(alias_names) | {"production", "staging"})
        self.fields["dataset"].offer_only_purpose()

    def api_payload(self) -> dict:
        data = self.cleaned_data
        return {"candidates": [{"method": method} for method in data["methods"]], "dataset": data["dataset"].pk,
                "alias": data["alias"], "max_tokens": data["max_tokens"]}


class ChangeRequestOpenForm(forms.Form):
    alias = forms.CharField(max_length=64, initial="production",
                            help_text="Where the version should serve: production, staging, ... "
                                      "(lower case letters, digits, '.', '_' and '-').")
    justification = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}),
                                    help_text="Why this version should serve there; approvers read it.")
    dataset = DatasetChoiceField(purpose=Dataset.Purpose.EVALUATION, required=False,
                                 help_text="Evaluation dataset of the gates' analysis; default: the newest one.")
    eval_dataset = DatasetChoiceField(purpose=Dataset.Purpose.EVALUATION, required=False,
                                      label="Labelled dataset",
                                      help_text="Labelled evaluation dataset of the task gates (accuracy drop, "
                                                "relative F1); default: the policy's.")

    def __init__(self, *args, version: ModelVersion, alias_names: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["alias"].widget.attrs["list"] = "alias-names"
        self.alias_names = sorted(set(alias_names) | {"production", "staging"})
        self.fields["dataset"].offer_only_purpose()
        self.fields["eval_dataset"].offer_only_purpose()
        self.version = version

    def api_payload(self) -> dict:
        data = self.cleaned_data
        payload = {"model": self.version.model.name, "version": self.version.number, "alias": data["alias"],
                   "justification": data["justification"]}
        if data.get("dataset"):
            payload["dataset"] = data["dataset"].pk
        if data.get("eval_dataset"):
            payload["eval_dataset"] = data["eval_dataset"].pk
        return payload


class WithdrawForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False, max_length=20_000,
                             help_text="Optional: why you take the request back.")


class RollbackForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text="Required: why production goes back.")
    to_version = forms.TypedChoiceField(coerce=int, label="Return to", choices=(),
                                        help_text="Only versions deployed to this alias through an approved change "
                                                  "request.")

    def __init__(self, *args, targets: list[ModelVersion] = (), default: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["to_version"].choices = [
            (v.number, f"v{v.number} ({v.kind}){' · previous deployment' if v.number == default else ''}")
            for v in targets]
        if default is not None:
            self.fields["to_version"].initial = default

