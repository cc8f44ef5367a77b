"""The optional config file: `url` and `token` for when LLMREG_URL / LLMREG_TOKEN are not set.

    # ~/.config/llmreg/config  (or the file LLMREG_CONFIG names; keep it chmod 600, it holds a token)
    [llmreg]
    url = https://registry.example.internal
    token = 0123abcd...
"""
import configparser
import os
from pathlib import Path

SECTION = "llmreg"


def config_path() -> Path:
    if os.environ.get("LLMREG_CONFIG"):
        return Path(os.environ["LLMREG_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "llmreg" / "config"


def read_config() -> dict[str, str]:
    """{url, token} from the config file, as far as it has them; {} when there is no file."""
    path = config_path()
    if not path.is_file():
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as error:
        raise ValueError(f"{path} is not a valid config file: {error}") from None
    if not parser.has_section(SECTION):
        raise ValueError(f"{path} has no [{SECTION}] section.")
    values = {key: value.strip() for key, value in parser[SECTION].items() if key in ("url", "token") and value.strip()}
    if "token" in values and path.stat().st_mode & 0o077:
        # Like ssh with a private key: a token that others on the machine can read is not used.
        raise ValueError(f"{path} holds a token but others can read it; run `chmod 600 {path}`.")
    return values
