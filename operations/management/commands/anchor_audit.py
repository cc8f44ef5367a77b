from django.core.management.base import BaseCommand

from foundation.anchoring import anchor_chain_head


class Command(BaseCommand):
    help = "Store the audit chain's head hash in object storage under retention (object lock)."

    def handle(self, *args, **options):
        head = anchor_chain_head()
        self.stdout.write(f"Anchored event {head['sequence']} ({head['hash']})." if head else "The chain is empty.")
