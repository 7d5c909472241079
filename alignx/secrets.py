"""Secret-looking values: how alignx recognises them and masks them before anything leaves the process.

A value is secret when the last component of its dotted key names a secret (``tracking.password``,
``hf_token``, ``headers.Authorization``, ``aws_secret_access_key``, ``private_key``), when it is
the ``user:password@`` part of a URL, or when the value itself has the shape of a credential
(``hf_`` + 30 letters/digits, ``sk-...``, an AWS access key id ``AKIA...``, ``ghp_...``). Keys are
matched by whole words, never substrings: ``model.num_key_value_heads``, ``max_new_tokens``,
``pad_token_id`` and ``prompt_key`` are settings, not secrets. Everything alignx writes down (MLflow params and tags, saved
config files, artifacts, log lines, error messages) goes through one of the functions here.

Pure on purpose: no MLflow, Hydra or torch, so any layer may use it.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"

#: a key whose words include one of these names a secret
SECRET_WORDS = frozenset({
    "token", "password", "passwords", "passwd", "passphrase", "secret", "secrets", "credential", "credentials",
    "authorization", "auth", "apikey", "cookie",
})
#: the word before a final ``key`` that makes it a secret (``api_key``, ``access_key``, ``hf_key``);
#: any other ``*_key`` (``prompt_key``, ``sort_key``, ``cache_key``) names a field, not a secret
_KEY_QUALIFIERS = frozenset({
    "api", "access", "secret", "private", "hf", "auth", "client", "signing", "encryption", "ssh", "master",
    "account", "service", "license", "session", "openai", "anthropic", "wandb", "mlflow", "aws", "gcp", "azure",
})
#: words that make "token" a tokenizer's vocabulary entry rather than a secret (pad_token, eos_token_id)
_VOCAB_WORDS = frozenset({"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "id", "ids"})

# user:password@ (or user@) in a scheme://... URL; also as Hydra prints an override (http\://u\:p@h)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*\\?:(?:\\?/){2})(?P<userinfo>[^/\s'\"]+)@")
# key=value / key: value / "key": "value" in free text; an HTTP auth scheme word stays with its value
_KEY_VALUE = re.compile(
    r"""(?P<key>[A-Za-z_][\w.\-]*)(?P<q>["']?)(?P<sep>[ \t]*[=:][ \t]*)"""
    r"""(?P<value>(?:(?:Bearer|Basic|Token|Digest)[ \t]+)?(?:"[^"\n]*"|'[^'\n]*'|[^\s,;&'"}\])]+))""",
)
# values that are credentials whatever their key: Hugging Face, OpenAI/Anthropic-style, AWS access
# key ids, GitHub and Slack tokens (prefix + enough random characters that no setting looks alike)
_CREDENTIAL_VALUE = re.compile(
    r"(?<![A-Za-z0-9_])(?:hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_\-]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|xox[abposr]-[A-Za-z0-9\-]{10,})(?![A-Za-z0-9_])"
)
# a Hydra override: key=value, +key=value, ++key=value, ~key=value
_OVERRIDE = re.compile(r"^(?P<prefix>\+{0,2}|~)(?P<key>[A-Za-z_][\w.\-/@]*)=(?P<value>.*)$", re.DOTALL)


def _words(name: str) -> list[str]:
    # split snake_case, kebab-case, camelCase and acronyms ("HFToken" -> hf, token)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", name)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", spaced)
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]


def is_secret_key(key: str) -> bool:
    """True if the last component of a dotted key names a secret.

    Whole words only (snake, kebab or camel case): a word token, password, passwd, passphrase,
    secret, credential(s), authorization, auth, apikey or cookie; or a last word ``key`` that stands
    alone or follows a word naming a credential (``api_key``, ``private_key``, ``aws_access_key``,
    ``hf_key``). Not secret: ``num_key_value_heads`` (key is not the last word), ``prompt_key`` /
    ``sort_key`` (a field name), ``max_new_tokens`` / ``*_tokens`` (counts), ``pad_token`` /
    ``eos_token_id`` (vocabulary), ``author`` (not the word auth).
    """
    words = _words(str(key).rsplit(".", 1)[-1])
    if not words:
        return False
    if words[-1] == "key":
        return len(words) == 1 or words[-2] in _KEY_QUALIFIERS or words[-2] in SECRET_WORDS
    for i, word in enumerate(words):
        if word == "token":
            neighbours = set(words[max(i - 1, 0) : i] + words[i + 1 : i + 2])
            if neighbours & _VOCAB_WORDS:
                continue
            return True
        if word in SECRET_WORDS:
            return True
    return False


def is_secret_path(key: str) -> bool:
    """True if any component of a dotted key names a secret (``tracking.credentials.user`` too)."""
    return any(is_secret_key(part) for part in str(key).split("."))


def strip_url_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user:password@, username, password)``; ``(uri, None, None)`` when it has none."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, unquote(user) or None, (unquote(password) if password else None)


def _mask_url_credentials(text: str) -> str:
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{MASK}@", text)


def looks_like_credential(value: str) -> bool:
    """True if ``value`` contains a string shaped like a known credential (``hf_...``, ``sk-...``, ``AKIA...``)."""
    return _CREDENTIAL_VALUE.search(str(value)) is not None


def redact_text(text: str) -> str:
    """``text`` with URL credentials, credential-shaped values and secret ``key=value`` / ``key: value`` pairs masked.

    For log lines, error messages and other free text: ``http://u:pw@host`` becomes
    ``http://***@host``, ``hf_token=abc`` becomes ``hf_token=***``, ``"password": "x"`` becomes
    ``"password": ***``, ``Authorization: Bearer x`` becomes ``Authorization: ***``. A bare
    ``key`` is left alone in text ("unknown key: optim.lrr", ``sorted(key=...)`` in a traceback);
    ``api_key=`` and the like are masked.
    """
    if not text:
        return text
    text = _CREDENTIAL_VALUE.sub(MASK, _mask_url_credentials(text))
    out, pos = [], 0
    while (m := _KEY_VALUE.search(text, pos)) is not None:
        if is_secret_key(m["key"]) and _words(m["key"].rsplit(".", 1)[-1]) != ["key"] and m["value"] != MASK:
            out.append(text[pos : m.start("value")] + MASK)
            pos = m.end()
        else:
            # only the key is consumed: the value may itself start a secret pair ("a=password=x")
            out.append(text[pos : m.end("sep")])
            pos = m.end("sep")
    out.append(text[pos:])
    return "".join(out)


def redact_override(override: str) -> str:
    """One Hydra override with its value masked when its key is secret (``+a.hf_token=x`` -> ``+a.hf_token=***``)."""
    m = _OVERRIDE.match(override)
    if m is None:
        return redact_text(override)
    if is_secret_path(m["key"]) and m["value"] not in ("", "null"):
        return f"{m['prefix']}{m['key']}={MASK}"
    return f"{m['prefix']}{m['key']}={redact_text(m['value'])}"


def redact_overrides(overrides: Iterable[str]) -> list[str]:
    """Hydra ``key=value`` overrides (``+key=``, ``++key=``, ``~key=`` too) with secret values masked."""
    return [redact_override(str(o)) for o in overrides]


def _mask_all(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _mask_all(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_mask_all(v) for v in tree]
    return tree if tree in (None, "") else MASK


def redact(tree: Any) -> Any:
    """A copy of a nested dict/list with every secret value masked.

    A value under a secret key is replaced by ``***`` (all of it, for a dict or list); any other
    string is masked as a Hydra override when it is one (``a.password=x``), else as free text
    (:func:`redact_text`: URL credentials, secret ``key=value`` pairs). None and "" stay as they are.
    """
    if isinstance(tree, Mapping):
        return {k: _mask_all(v) if is_secret_key(str(k)) else redact(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [redact(v) for v in tree]
    if isinstance(tree, str):
        return redact_override(tree) if _OVERRIDE.match(tree) else redact_text(tree)
    return tree


class SecretFilter(logging.Filter):
    """A logging filter that masks secrets (:func:`redact_text`) in each record's message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        _mask_record(record)
        return True


def _mask_record(record: logging.LogRecord) -> None:
    if getattr(record, "_alignx_masked", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it when a handler formats the record
        return
    masked = redact_text(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    record._alignx_masked = True


def _masking_factory(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        _mask_record(record)
        return record

    make_record._alignx_masks = True  # type: ignore[attr-defined]
    return make_record


def install_secret_filter() -> SecretFilter:
    """Mask secrets in every log record of this process, whichever logger or handler it goes through.

    Installs a log record factory that masks each record as it is created (it survives the
    logging reconfigurations Hydra does before and between jobs), and attaches a
    :class:`SecretFilter` to every handler configured now and to the ``alignx`` logger (for
    records made by a factory installed later). Idempotent.
    """
    current = logging.getLogRecordFactory()
    if not getattr(current, "_alignx_masks", False):
        logging.setLogRecordFactory(_masking_factory(current))
    secret_filter = SecretFilter()
    loggers = [logging.getLogger(), logging.getLogger("alignx")]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        targets = [*logger.handlers, logger] if logger.name == "alignx" else logger.handlers
        for target in targets:
            if not any(isinstance(f, SecretFilter) for f in target.filters):
                target.addFilter(secret_filter)
    return secret_filter
