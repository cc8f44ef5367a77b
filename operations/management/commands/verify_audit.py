from django.core.management.base import BaseCommand, CommandError

from foundation.anchoring import verify_anchored_chain


class Command(BaseCommand):
    help = "Walk the audit hash chain (and check it against the newest storage anchor); name the first bad event."

    def handle(self, *args, **options):
        result, anchor = verify_anchored_chain()
        if not result.ok:
            raise CommandError(f"Audit chain broken at event {result.first_bad}: {result.reason} "
                               f"({result.events} events verified before it).")
        anchored = f", anchored at event {anchor['sequence']}" if anchor else ", no anchor in storage yet"
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {result.events} events{anchored}."))
