"""JSON-RPC 2.0 over the node's Unix control socket, one JSON object per line.

Methods are async functions registered by name; their keyword parameters are the RPC params,
checked before the call so a typo gets an error naming the parameter and the expected ones.
Errors carry a stable numeric code and a message a person can act on (see the README).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from agentd.errors import NotRunning, UserError, did_you_mean
from agentd.rpc_types import check_params
from protocol.errors import Refusal
from protocol.keys import b64u
from store import is_failure

log = logging.getLogger("agentd.rpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REFUSED = -32010  # the request was understood and refused; data.reason says why
NOT_FOUND = -32011
TIMEOUT = -32013
DATABASE = -32014  # the node's database failed (disk full, I/O error, file deleted): not the call
MAX_REQUEST = 4 << 20  # one request line, in bytes: a longer one is refused, the socket closed
MAX_MESSAGE = 1000  # characters of an error message: one echoing a huge value is cut short

Method = Callable[..., Awaitable[Any]]


class RpcError(Exception):
    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason

    def to_map(self) -> dict[str, Any]:
        message = self.message  # one that echoes a huge value is cut short
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE - 3] + "..."
        out: dict[str, Any] = {"code": self.code, "message": message}
        if self.reason is not None:
            out["data"] = {"reason": self.reason}
        return out


def jsonable(value: Any) -> Any:
    """A msgpack value as JSON can carry it: bytes become unpadded base64url text."""
    if isinstance(value, bytes):
        return b64u(value)
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def invalid_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message, "INVALID_PARAMS")


def database_error(method: str, exc: BaseException) -> RpcError:
    """A call that met a failure of the node's database (``store.is_failure``): the node's
    fault, not the request's, said so, and logged (the writer counted it for getinfo). The
    write that failed changed nothing (a job is rolled back whole, or never run); a call that
    wrote before it may have saved that earlier write, so the message does not promise more."""
    log.error("RPC %s: the node's database failed: %s", method, exc)
    return RpcError(DATABASE, f"the node could not use its database: {exc}; the write that "
                    "failed changed nothing. This is the node's failure, not the request's: "
                    "fix the cause (the node's log and getinfo.last_db_error say more) before "
                    "calling again", "DATABASE")


class RpcServer:
    def __init__(self, refused: Callable[[Refusal], RpcError]) -> None:
        self.methods: dict[str, Method] = {"help": self.help}
        self._refused = refused  # how a method's refusal is answered (agentd.runtime.refusals)
        # told each call's duration (the node feeds its latency histogram from it)
        self.observe: Callable[[str, float], None] | None = None

    def register(self, name: str, method: Method) -> None:
        self.methods[name] = method

    async def help(self, method: str | None = None) -> list[dict[str, Any]]:
        """Every method (or the one named) with its parameters, their types and defaults, and
        what it does."""
        from agentd.methods import describe

        if method is not None and method not in self.methods:
            raise RpcError(METHOD_NOT_FOUND, f"unknown method {method!r}"
                           f"{did_you_mean(method, self.methods)}", "METHOD_NOT_FOUND")
        names = [method] if method is not None else sorted(self.methods)
        return [jsonable(describe(name, self.methods[name])) for name in names]

    async def call(self, name: str, params: Any) -> Any:
        method = self.methods.get(name)
        if method is None:
            raise RpcError(METHOD_NOT_FOUND, f"unknown method {name!r}"
                           f"{did_you_mean(name, self.methods)}; 'agentd help' lists them all",
                           "METHOD_NOT_FOUND")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise invalid_params("params must be an object of name=value pairs")
        signature = _signature(method)
        accepted = list(signature.parameters)
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            expected = ", ".join(accepted) or "no parameters"
            raise invalid_params(f"{name}: unknown parameter {unknown[0]!r}"
                                 f"{did_you_mean(unknown[0], accepted)}; expected: {expected}")
        missing = [p.name for p in signature.parameters.values()
                   if p.default is inspect.Parameter.empty and p.name not in params]
        if missing:  # all of them at once, and where to read what they take
            named = ", ".join(map(repr, missing))
            raise invalid_params(f"{name}: missing parameter{'s' * (len(missing) > 1)} {named} "
                                 f"(agentd help {name} shows what each takes)")
        misfit = check_params(name, signature, params)
        if misfit is not None:
            raise invalid_params(misfit)
        started = time.perf_counter()
        try:
            return await method(**params)
        except Refusal as exc:
            raise self._refused(exc) from exc
        except RpcError as exc:  # a bad value: say in which call, as for a missing one
            if exc.code != INVALID_PARAMS or exc.message.startswith(f"{name}: "):
                raise
            raise RpcError(exc.code, f"{name}: {exc.message}", exc.reason) from exc
        except Exception as exc:
            if not is_failure(exc):
                raise  # a bug: the caller answers INTERNAL_ERROR
            raise database_error(name, exc) from exc
        finally:
            if self.observe is not None:
                self.observe(name, time.perf_counter() - started)

    async def handle_line(self, line: bytes) -> dict[str, Any] | None:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(None, RpcError(PARSE_ERROR, f"request is not JSON: {exc}"))
        except RecursionError:
            return _error(None, RpcError(PARSE_ERROR, "request is nested too deeply"))
        if isinstance(request, list):
            return _error(None, RpcError(INVALID_REQUEST, "batches are not taken: send one "
                                         "request object a line, each answered in turn"))
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(
            request.get("method"), str
        ):
            return _error(request.get("id") if isinstance(request, dict) else None,
                          RpcError(INVALID_REQUEST, "expected a JSON-RPC 2.0 request object"))
        request_id = request.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, str | int | float | None):
            return _error(None, RpcError(INVALID_REQUEST, "id must be a string, a number or "
                                         "null"))
        notification = "id" not in request  # answered with nothing, not even an error
        try:
            result = await self.call(request["method"], request.get("params"))
        except RpcError as exc:
            return None if notification else _error(request_id, exc)
        except Exception as exc:
            log.exception("RPC method %s failed", request["method"])
            return None if notification else _error(
                request_id, RpcError(INTERNAL_ERROR, f"internal error: {exc}"))
        if notification:
            return None
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    async def serve(self, path: Path, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the Unix socket at ``path`` (mode 0600) until cancelled."""
        listener = _unix_listener(path)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._connection, [listener])
                task_status.started()
        finally:
            path.unlink(missing_ok=True)

    async def answer(self, line: bytes) -> bytes | None:
        """The encoded response to one request line. Whatever the line holds, a failure
        costs this request an error answer, never the node."""
        try:
            response = await self.handle_line(line)
            return None if response is None else _encode(response)
        except RecursionError:  # e.g. an id nested too deeply to encode
            return _encode(_error(None, RpcError(INVALID_REQUEST, "request is nested too deeply")))
        except Exception as exc:
            log.exception("RPC request failed")
            return _encode(_error(None, RpcError(INTERNAL_ERROR, f"internal error: {exc}")))

    async def _connection(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            async with stream:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                    while (end := buffer.find(b"\n")) >= 0 and end <= MAX_REQUEST:
                        line = bytes(buffer[:end])
                        del buffer[:end + 1]
                        if line.strip() and (response := await self.answer(line)) is not None:
                            await stream.send_all(response)
                    if len(buffer) > MAX_REQUEST:
                        await stream.send_all(_encode(_error(None, RpcError(
                            INVALID_REQUEST, f"request line longer than {MAX_REQUEST} bytes"))))
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


@functools.lru_cache(maxsize=256)
def _signature(method: Method) -> inspect.Signature:
    return inspect.signature(method)


def _error(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_map()}


def _encode(response: dict[str, Any]) -> bytes:
    return json.dumps(response, separators=(",", ":")).encode() + b"\n"


def _unix_listener(path: Path) -> trio.SocketListener:
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket of a node that did not stop cleanly
        else:
            raise UserError(f"{path}: another agentd is already running on this data dir")
        finally:
            probe.close()
    # bound and listening with no checkpoint between: a client that sees the file (as the
    # sim's and the benchmarks' wait for a node does) can connect
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise UserError(f"{path}: cannot create control socket: {exc.strerror or exc}") from exc
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


START = ("start it with 'agentd up DIR' (in the background) or 'agentd run -c CONFIG' (in the"
         " foreground)")


def call(socket_path: Path, method: str, params: dict[str, Any], timeout: float | None = None,
         *, start: str = START) -> Any:
    """Blocking client: one request, one response. Raises RpcError or UserError (``start``:
    how to start the node, when none answers)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(socket_path))
        except FileNotFoundError as exc:
            raise NotRunning(f"no agentd is running here (no control socket at {socket_path});"
                            f" {start}") from exc
        except ConnectionRefusedError as exc:  # the socket file of a node that was killed
            if not _is_socket(socket_path):  # or no socket at all: a config file, say
                raise UserError(f"{socket_path} is not a control socket: --socket takes the "
                                "agentd.sock in a node's data_dir; a node's config goes with -c"
                                " CONFIG") from exc
            raise NotRunning(f"no agentd is running here (nothing answers at {socket_path}: the"
                            f" node stopped without removing it); {start}") from exc
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        lost = UserError(f"agentd closed the control socket during {method!r}: whether it was "
                         "done is unknown (look, with a .list or .show method, before calling "
                         "it again)")
        try:  # MSG_NOSIGNAL: a node gone mid-request is an error here, not a SIGPIPE death
            sock.sendall(json.dumps(request).encode() + b"\n", socket.MSG_NOSIGNAL)
            buffer = b""
            while not buffer.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise lost
                buffer += chunk
        except ConnectionError as exc:  # reset or broken pipe: the node went away
            raise lost from exc
    except TimeoutError as exc:
        raise UserError(f"agentd did not answer {method!r} within {timeout} s") from exc
    finally:
        sock.close()
    return result_of(json.loads(buffer))


def result_of(response: dict[str, Any]) -> Any:
    """A JSON-RPC response's result; its error raised as ``RpcError``."""
    if "error" in response:
        error = response["error"]
        raise RpcError(error["code"], error["message"], (error.get("data") or {}).get("reason"))
    return response["result"]
