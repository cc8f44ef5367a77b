"""The web process checks job requests without loading the ML stack (torch costs each web worker ~400 MB)."""
import os
import subprocess
import sys

from tests.e2e.conftest import ROOT


def test_loading_every_url_and_checking_job_requests_imports_no_torch():
    code = (
        "import django, sys; django.setup()\n"
        "from django.urls import get_resolver; get_resolver().url_patterns\n"
        "import console.admin, workers.services, workers.merge_services, workers.merge_api, registry.serving\n"
        "from workers.pipelines.specs import AnalysisSpec, LoraSpec, QuantizeSpec, validate_analysis_spec, "
        "validate_lora_spec, validate_quantize_spec\n"
        "validate_quantize_spec(QuantizeSpec(method='nf4')); validate_analysis_spec(AnalysisSpec())\n"
        "validate_lora_spec(LoraSpec())\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'matplotlib', 'weasyprint', "
        "'compressed_tensors') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PATH": "/usr/bin:/bin",
                                 **{k: v for k, v in os.environ.items() if k.startswith("TEST_")}})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
