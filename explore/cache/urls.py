"""Redis URLs, whose password is never printed: one redaction, and a wrapper that carries a URL through Ray
arguments, errors and logs redacted."""

from __future__ import annotations


def redact_url(url: str) -> str:
    """The URL with its secrets replaced by '***', for messages and logs: the password of the user-info
    part, a lone user-info value (redis://secret@host, a password in the user slot), and `password=` /
    `username=` query parameters. An unparseable URL gives a placeholder, never the text."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(str(url))
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        return "<unparseable URL>"
    if "@" in str(url) and "@" not in parts.netloc:  # no scheme: "secret@host:6379" is all path
        return "***@" + str(url).rsplit("@", 1)[1]
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if parts.query:
        query = [
            (k, "***" if k.lower() in ("password", "username") else v) for k, v in parse_qsl(parts.query)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


def has_credentials(url: str) -> bool:
    return redact_url(url) != url


class SecretURL:
    """A Redis URL that holds a password: `str()` and `repr()` show it redacted, so it can travel as a Ray
    actor or task argument (and show up in an error or a log line) without leaking; `reveal()` gives the URL
    to connect with."""

    __slots__ = ("_url",)

    def __init__(self, url: str | SecretURL):
        self._url = url.reveal() if isinstance(url, SecretURL) else str(url)

    def reveal(self) -> str:
        return self._url

    def __str__(self) -> str:
        return redact_url(self._url)

    def __repr__(self) -> str:
        return f"SecretURL({redact_url(self._url)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, SecretURL) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __reduce__(self):
        return (SecretURL, (self._url,))


def reveal(url: str | SecretURL) -> str:
    """The plain URL of a str or SecretURL."""
    return url.reveal() if isinstance(url, SecretURL) else url
