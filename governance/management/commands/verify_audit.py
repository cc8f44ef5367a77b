from django.core.management.base import BaseCommand, CommandError

from governance.anchoring import latest_anchor
from governance.audit import verify_chain


class Command(BaseCommand):
    help = "Walk the audit hash chain (and check it against the newest storage anchor); name the first bad event."

    def handle(self, *args, **options):
        anchor = latest_anchor()
        result = verify_chain(expected_head=(anchor["sequence"], anchor["hash"]) if anchor else None)
        if not result.ok:
            raise CommandError(f"Audit chain broken at event {result.first_bad}: {result.reason} "
                               f"({result.events} events verified before it).")
        anchored = f", anchored at event {anchor['sequence']}" if anchor else ", no anchor in storage yet"
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {result.events} events{anchored}."))
