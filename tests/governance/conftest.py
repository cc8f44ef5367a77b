"""Governance fixtures: sealed versions registered through the services, and analyses with known statistics."""
import pytest

from registry import services as registry_services
from registry.models import Dataset
from tests.conftest import jsonl
from workers.models import Analysis, Job


def register_version(model, directory, actor):
    version = registry_services.create_version(model=model, description="", actor=actor)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        with open(path, "rb") as handle:
            registry_services.upload_version_file(version=version, path=path.relative_to(directory).as_posix(),
                                                  stream=handle, content_length=path.stat().st_size,
                                                  expected_sha256=None, actor=actor)
    return registry_services.seal_version(version=version, actor=actor)


@pytest.fixture
def credit_model(engineer):
    return registry_services.create_model(name="credit-llm", description="Credit memos", actor=engineer)


@pytest.fixture
def versions(credit_model, engineer, tiny_model_dir):
    """Three sealed versions of credit-llm, authored by the engineer."""
    return [register_version(credit_model, tiny_model_dir, engineer) for _ in range(3)]


@pytest.fixture
def evaluation_dataset(engineer):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("eval.jsonl", jsonl([{"text": "The bank raised its rate."}] * 4))
    return registry_services.register_dataset(name="eval", purpose="evaluation", uploaded_file=upload,
                                              actor=engineer)


def analysis_result(*, kl_mean=0.01, kl_p99=0.1, top1=0.97, ppl_ratio=1.01, flip_rate=None) -> dict:
    stats = dict.fromkeys(["mean_uncertainty", "min", "p0_1", "p1", "p5", "p10", "median", "p90", "p95", "p99_9",
                           "max"], 0.0)
    return {"tokens": 1000, "seconds": 1.0, "kl": {**stats, "mean": kl_mean, "p99": kl_p99},
            "delta_p": {**stats, "mean": 0.0, "p99": 0.0}, "rms_delta_p": 0.01, "top1_agreement": top1,
            "top1_agreement_uncertainty": 0.01, "topk_overlap": 0.9, "ppl_reference": 10.0,
            "ppl_candidate": 10.0 * ppl_ratio, "ppl_ratio": ppl_ratio, "ln_ppl_ratio": 0.0, "nll_correlation": 0.99,
            "flips": None if flip_rate is None else {"accuracy_reference": 0.5, "accuracy_candidate": 0.5,
                                                     "correct_to_incorrect": 1, "incorrect_to_correct": 1,
                                                     "rate": flip_rate},
            "layers": [], "histograms": {"kl": {"edges": [0, 1], "counts": [1]},
                                         "delta_p": {"edges": [-1, 1], "counts": [1]}}}


def make_analysis(*, reference, candidate, dataset: Dataset, actor, **stats) -> Analysis:
    job = Job.objects.create(kind=Job.Kind.ANALYSIS, status=Job.Status.SUCCEEDED, progress=100, created_by=actor,
                             source_version=candidate)
    return Analysis.objects.create(reference=reference, candidate=candidate, dataset=dataset, job=job,
                                   created_by=actor, result=analysis_result(**stats))
