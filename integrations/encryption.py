"""Webhook signing secrets encrypted at rest (Fernet: AES-128-CBC with HMAC-SHA256), keyed from a setting."""
import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings


def _fernet() -> Fernet:
    # WEBHOOK_SECRETS_KEY when set, else SECRET_KEY; either way stretched to a Fernet key by HKDF, so any
    # high-entropy string works and the key differs from every other use of SECRET_KEY.
    material = (settings.WEBHOOK_SECRETS_KEY or settings.SECRET_KEY).encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"llm-registry webhook secrets").derive(material)
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt_secret(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt_secret(token: str) -> str:
    """The clear secret; raises RuntimeError (never showing the token) when the key changed since it was stored."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise RuntimeError("A webhook secret cannot be decrypted: WEBHOOK_SECRETS_KEY (or SECRET_KEY) changed "
                           "since it was stored; create the subscription again.") from None
