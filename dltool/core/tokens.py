"""Bearer tokens of dltool's network services, one way for all of them.

`dltool tune --chief` and `dltool serve` (off loopback) refuse a call that
does not carry their token. A service makes a token with `write_token` (a
new one, in a file only its owner can read) unless it is given one; a client
finds it with `read_token`: a `--token-file`, else an environment variable.
TensorFlow-free, so `dltool.core` stays so.
"""

import os
import secrets
from pathlib import Path

from dltool.core import files
from dltool.core.errors import DltoolError


def write_token(path):
    """Generates a token and writes it to `path`, replacing any file there.

    The file is written atomically and readable by its owner only (mode
    0600), never readable by others, not even before a chmod.

    Args:
        path: The token file.

    Returns:
        The token (`secrets.token_urlsafe(32)`: 43 characters).

    Raises:
        OSError: if `path` cannot be written.
    """
    token = secrets.token_urlsafe(32)
    with files.replacing(Path(path)) as tmp:
        tmp.unlink(missing_ok=True)
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
    return token


def read_token(token_file=None, env_var=None, *, environ=None, whose="the",
               made_by="dltool writes"):
    """A token given to a command: `token_file`, else the variable `env_var`.

    Args:
        token_file: The `--token-file` path, or None.
        env_var: The environment variable that may hold the token, or None.
        environ: The environment; `os.environ` when None.
        whose: Whose token, for the errors ("the chief's").
        made_by: What makes such tokens, for the errors ("as the chief
            writes to chief.token").

    Returns:
        The token, or None when neither gives one (an empty variable gives
        none).

    Raises:
        DltoolError: if `token_file` cannot be read, or it or the variable
            holds no token.
    """
    environ = os.environ if environ is None else environ
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise DltoolError(f"cannot read {whose} token from {path}: "
                              f"{getattr(e, 'strerror', None) or type(e).__name__}") from None
        return check_token(token, str(path), made_by)
    if env_var is not None and environ.get(env_var, "").strip():
        return check_token(environ[env_var].strip(), env_var, made_by)
    return None


def check_token(token, source, made_by="dltool writes"):
    """Returns `token` if it is one line of what `secrets.token_urlsafe` makes.

    Letters, digits, `-` and `_` only: an HTTP header and gRPC metadata take
    it as it is.

    Raises:
        DltoolError: naming `source` (a file or a variable), otherwise.
    """
    if not token or not all(c.isascii() and (c.isalnum() or c in "-_") for c in token):
        raise DltoolError(f"{source} holds no token (one line of letters, digits, - and _, "
                          f"{made_by})")
    return token
