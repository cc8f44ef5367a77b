"""The main story on embedded defaults: users per role, a tiny model built here, registered, sealed, quantized.

Runs against the stack that `make up` started (the quantization runs on its Celery worker).
"""
import json
import secrets
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from foundation.roles import APPROVER, ML_ENGINEER, OPS, REGULATOR
from governance.services import decide, open_change_request, roll_back
from registry import services
from registry.models import ModelVersion, RegisteredModel
from reports.models import Report
from reports.selectors import report_pdf, verify_report
from workers.pipelines.tiny_model import SAMPLE_TEXTS, build_tiny_llama
from workers.services import start_lora_update, start_quantization

DEMO_USERS = [
    ("alice", ML_ENGINEER, "ML engineer: registers, uploads, quantizes, opens change requests"),
    ("bob", APPROVER, "approver"),
    ("carol", APPROVER, "approver"),
    ("oscar", OPS, "ops: rolls production back"),
    ("rita", REGULATOR, "regulator: reads reports and the audit trail"),
]
DEMO_MODEL = "demo-llm"


class Command(BaseCommand):
    help = "Run the demo story on the local stack and print what it did."

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--timeout", type=int, default=600, help="Seconds to wait for each job.")

    def handle(self, *args, base_url, timeout, **options):
        users = self._ensure_users()
        engineer = users["alice"]
        model_dir = self._build_model()
        version = self._register(model_dir, engineer)
        self.stdout.write(f"Registered and sealed {version} (manifest {version.manifest_sha256[:16]}...)")
        datasets = self._register_datasets(engineer)
        quantized = {method: self._quantize(version, engineer, timeout, method) for method in ("nf4", "int8")}
        lora = self._lora_update(version, datasets["training"], engineer, timeout)
        self._governance(users, version, quantized, datasets["evaluation"], timeout)
        self._collect_reports(timeout)
        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS("Demo finished."))
        self.stdout.write(f"  Admin UI:  {base_url}/admin/   (log in as any user above)")
        self.stdout.write(f"  API docs:  {base_url}/api/docs/")
        self.stdout.write(f"  Versions:  {base_url}/api/v1/models/{self.model_name}/versions/")
        self.stdout.write(f"  Quantized: {base_url}/api/v1/models/{self.model_name}/versions/{quantized['nf4']['version']}/")
        self.stdout.write(f"  LoRA:      {base_url}/api/v1/models/{self.model_name}/versions/{lora['version']}/")
        token = Token.objects.get(user=engineer).key
        self.stdout.write(f"  Try:       curl -H 'Authorization: Token {token}' "
                          f"{base_url}/api/v1/models/{self.model_name}/versions/{lora['version']}/lineage")

    def _ensure_users(self) -> dict:
        """Create the demo users once; their passwords are generated and kept in .var/demo-users.json (0600)."""
        credentials_file = Path(settings.BASE_DIR) / ".var" / "demo-users.json"
        credentials = json.loads(credentials_file.read_text()) if credentials_file.exists() else {}
        users = {}
        self.stdout.write("Demo users (username / password / role):")
        for username, role, description in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            if user is None or username not in credentials:
                credentials[username] = secrets.token_urlsafe(9)
                user = user or User(username=username, email=f"{username}@bank.example")
                user.is_staff = True
                user.set_password(credentials[username])
                user.save()
            user.groups.add(Group.objects.get(name=role))
            Token.objects.get_or_create(user=user)
            users[username] = user
            self.stdout.write(f"  {username:6} {credentials[username]:14} {role:12} {description}")
        credentials_file.parent.mkdir(parents=True, exist_ok=True)
        credentials_file.write_text(json.dumps(credentials, indent=2))
        credentials_file.chmod(0o600)
        return users

    def _build_model(self) -> Path:
        model_dir = Path(settings.BASE_DIR) / ".var" / "demo" / "tiny-llama"
        if not (model_dir / "config.json").exists():
            self.stdout.write("Building a tiny Llama with its own tokenizer (trained briefly on finance text)...")
            build_tiny_llama(model_dir, seed=0, train_steps=150)
        return model_dir

    def _register(self, model_dir: Path, engineer):
        # Each run tells the story on a model of its own, so production starts empty every time.
        name, suffix = DEMO_MODEL, 1
        while RegisteredModel.objects.filter(name=name).exists():
            suffix += 1
            name = f"{DEMO_MODEL}-{suffix}"
        self.model_name = name
        model = services.create_model(name=name, description="Tiny Llama built by the demo: credit-memo drafting "
                                      "assistant", actor=engineer)
        version = services.create_version(model=model, description="Full-precision upload", actor=engineer)
        for file_path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            with open(file_path, "rb") as handle:
                item = services.upload_version_file(version=version, path=file_path.relative_to(model_dir).as_posix(),
                                                    stream=handle, content_length=file_path.stat().st_size,
                                                    expected_sha256=None, actor=engineer)
            self.stdout.write(f"  uploaded {item.path:28} {item.size:>10} bytes  sha256 {item.sha256[:16]}...")
        return services.seal_version(version=version, actor=engineer)

    def _wait(self, job, timeout: int) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            job.refresh_from_db()
            line = f"  job {job.pk} {job.kind}: {job.status} {job.progress}% {job.message}"
            if line != last:
                self.stdout.write(line)
                last = line
            if job.is_finished:
                if job.status != "succeeded":
                    raise CommandError(f"Job {job.pk} {job.status}: {job.error}")
                return job.result
            time.sleep(0.5)
        raise CommandError(f"Job {job.pk} did not finish in {timeout} s; is the worker running? (make up)")

    def _quantize(self, version, engineer, timeout: int, method: str) -> dict:
        job = start_quantization(version=version, method=method, compute_dtype="float32",
                                 double_quant=method != "int8", skip_modules=["lm_head"], actor=engineer)
        self.stdout.write(f"Quantizing {version} to {method.upper()} on the worker (job {job.pk})...")
        return self._wait(job, timeout)

    def _register_datasets(self, engineer) -> dict:

        evaluation = "".join(json.dumps({"text": text}) + "\n" for text in SAMPLE_TEXTS)
        training = "".join(json.dumps({"prompt": f"Summarise for the credit file: {text}",
                                       "completion": f" {text.split()[1].capitalize()} update noted."}) + "\n"
                           for text in SAMPLE_TEXTS)
        datasets = {}
        for purpose, content in (("evaluation", evaluation), ("training", training)):
            datasets[purpose] = services.register_dataset(
                name=f"demo-{purpose}", purpose=purpose, actor=engineer,
                uploaded_file=SimpleUploadedFile(f"{purpose}.jsonl", content.encode()))
            dataset = datasets[purpose]
            self.stdout.write(f"Registered dataset {dataset.pk} ({purpose}, {dataset.records} records, sha256 "
                              f"{dataset.sha256[:16]}..., personal data: {dataset.pii_status})")
        return datasets

    def _lora_update(self, version, dataset, engineer, timeout: int) -> dict:
        job = start_lora_update(base=version, dataset=dataset, actor=engineer,
                                lora_settings={"r": 8, "alpha": 16, "steps": 30, "learning_rate": 0.003, "seed": 0})
        self.stdout.write(f"Training a LoRA update on {version} (job {job.pk})...")
        return self._wait(job, timeout)

    def _collect_reports(self, timeout: int) -> None:
        """Wait for the worker to sign and store the three final reports, and save copies to look at."""

        deadline = time.monotonic() + timeout
        final = Report.objects.none()
        while time.monotonic() < deadline:
            final = Report.objects.filter(model__name=self.model_name, status=Report.Status.FINAL).order_by("pk")
            if final.count() >= 3:
                break
            time.sleep(1)
        if final.count() < 3:
            raise CommandError(f"Only {final.count()} of 3 reports were final after {timeout} s; see .var/log/worker.log")
        folder = Path(settings.BASE_DIR) / ".var" / "demo" / "reports"
        folder.mkdir(parents=True, exist_ok=True)
        self.stdout.write("Signed reports (stored under object lock; local copies to open):")
        for report in final:
            path = folder / f"{self.model_name}-report-{report.pk}-{report.kind}.pdf"
            path.write_bytes(report_pdf(report))
            verdict = verify_report(report)
            self.stdout.write(f"  report {report.pk} {report.kind:13} sha256 {report.sha256[:16]}...  "
                              f"intact={verdict['intact']} trusted={verdict.get('trusted')}  {path}")

    def _approve(self, request, approvers, comment: str):
        for approver in approvers:
            request = decide(change_request=request, actor=approver, decision="approve", comment=comment)
            self.stdout.write(f"  {approver.username} approved -> {request.status}")
        return request

    def _wait_for_gates(self, request, timeout: int):
        deadline = time.monotonic() + timeout
        while request.status in ("analysing", "stale") and time.monotonic() < deadline:
            time.sleep(1)
            request.refresh_from_db()
        for gate in request.gates:
            verdict = "passed" if gate["passed"] else "FAILED"
            self.stdout.write(f"  gate {gate['name']:10} value {gate['value']!s:24} threshold {gate['threshold']:<6}"
                              f" {verdict}")
        return request

    def _governance(self, users, version, quantized, evaluation, timeout: int) -> None:
        model = version.model
        approvers = [users["bob"], users["carol"]]
        self.stdout.write(f"Change request: {model.name}@production -> v{version.number} (first deployment)")
        first = open_change_request(model=model, alias="production", version_number=version.number,
                                    justification="Initial production release of the credit-memo assistant.",
                                    actor=users["alice"])
        self._approve(first, approvers, "Validated on the credit memo test set.")
        deployed = [version.number]
        for method in ("nf4", "int8"):
            number = quantized[method]["version"]
            self.stdout.write(f"Change request: {model.name}@production -> v{number} ({method.upper()}); "
                              "gates come from an analysis against the current version...")
            request = open_change_request(model=model, alias="production", version_number=number,
                                          justification=f"{method.upper()} quantization cuts serving memory.",
                                          dataset_id=evaluation.pk, actor=users["alice"])
            request = self._wait_for_gates(request, timeout)
            if request.status == "pending":
                self._approve(request, approvers, "Gates pass; drift within policy.")
                deployed.append(number)
                break
            self.stdout.write(f"  {request.status}: {request.status_reason}")
        if len(deployed) < 2:
            raise CommandError("No quantized version passed the gates; see the change requests in the admin.")
        change = roll_back(model=model, alias="production", reason="Demo: latency regression reported by ops.",
                           to_version_number=None, actor=users["oscar"])
        self.stdout.write(f"oscar rolled {model.name}@production back: v{change.from_version.number} -> "
                          f"v{change.to_version.number}")
        current = ModelVersion.objects.get(pk=change.to_version_id)
        self.stdout.write(f"{model.name}@production now serves v{current.number}.")
