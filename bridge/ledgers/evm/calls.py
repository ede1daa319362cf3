"""Contract calls and event decoding with each function's and event's ABI worked out once
(issue 14).

web3's ``ContractFunction`` re-derives everything on every call: it looks the function up
in the ABI, validates the ABI, hashes the signature into its selector (a keccak),
type-checks and normalises every argument, and maps every result through its normaliser
pipeline. In a relayer under load, profiled with py-spy during a batched soak, that was
about a third of the event loop's busy time (``prepare_transaction`` alone 17 %); the JSON-RPC
round trip itself was a small part.

:class:`ContractCalls` stands in for a web3 contract object in the adapter. It has the
contract's ``address``; its ``functions.<name>(*args)`` returns a :class:`BoundCall` with
web3's ``call``, ``estimate_gas`` and ``build_transaction``, and its ``events.<Name>()`` a
:class:`BoundEvent` with web3's ``topic`` and ``process_log`` (``["args"]``; about 0.2 ms of
web3's pipeline per log, for every leg event a watcher or a batch receipt decodes). A call
is the web3 codec's ``encode`` behind the cached selector, one ``eth_call`` or
``eth_estimateGas`` through the same ``AsyncWeb3``'s request manager (the same provider,
session, response validation and revert exceptions; not its request formatters, whose work
is already done here), and the codec's ``decode``.

Guarantees, checked against web3's own ``ContractFunction`` and ``ContractEvent`` for every
function and event of every committed ABI (``tests/unit/test_evm_calls.py``) and by the
adapter conformance suite on real nodes:

- the request is exactly what web3 sends: the same calldata (the same codec, web3's strict
  registry, and selector), fields and block;
- a result is what web3's ``call`` returns: one output as the value, several as a list,
  tuples as the codec decodes them, arrays as lists and addresses checksummed (as web3's
  return normalisers leave them);
- undecodable return data (no code at the address, for one) raises web3's
  ``BadFunctionCallOutput``; a revert raises web3's ``ContractLogicError`` /
  ``ContractCustomError`` (raised by ``eth_call`` itself);
- an event's arguments are what web3's ``process_log`` gives (structs as mappings of their
  components), and a log of another event or topic count raises web3's MismatchedABI or
  LogTopicError;
- a built transaction has ``to``, ``data`` and ``value`` (0 unless given) added to the
  fields the caller gives, which must include the gas, the fee fields and the chain id:
  nothing is fetched from the node behind the caller's back.

Overloaded functions are refused when the table is built (no committed contract has any);
arguments are not coerced (bytes stay bytes, addresses are strings) beyond what the codec
itself accepts, so a wrong argument fails in ``encode``, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, cast

from eth_abi.codec import ABICodec
from eth_abi.exceptions import DecodingError
from eth_typing import ABIEvent, ABIFunction
from eth_utils.abi import (
    collapse_if_tuple,
    event_abi_to_log_topic,
    function_abi_to_4byte_selector,
)
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3._utils.method_formatters import get_error_formatters
from web3._utils.rpc_abi import RPC
from web3.exceptions import BadFunctionCallOutput, LogTopicError, MismatchedABI
from web3.types import BlockIdentifier, RPCEndpoint, TxParams

from bridge.ledgers.evm.artifacts import load_abi
from bridge.ledgers.evm.quantities import quantity


@dataclass(frozen=True, slots=True)
class AbiFunction:
    """One contract function: its selector and its input and output types as the codec
    names them (tuples collapsed to ``(t1,t2,...)``)."""

    name: str
    selector: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    normalised: bool
    """Whether any output holds an address or an array (results then go through
    :func:`_normalised`)."""

    @classmethod
    def from_abi(cls, entry: Mapping[str, Any]) -> AbiFunction:
        """The function an ABI ``function`` entry describes."""
        outputs = tuple(collapse_if_tuple(dict(o)) for o in entry.get("outputs", ()))
        return cls(
            name=str(entry["name"]),
            selector=bytes(function_abi_to_4byte_selector(cast(ABIFunction, dict(entry)))),
            inputs=tuple(collapse_if_tuple(dict(i)) for i in entry.get("inputs", ())),
            outputs=outputs,
            normalised=any("address" in t or "[" in t for t in outputs),
        )

    def calldata(self, codec: ABICodec, args: Sequence[Any]) -> str:
        """``0x`` + selector + the encoded arguments; TypeError for a wrong argument count,
        the codec's EncodingError for a value its type does not take."""
        if len(args) != len(self.inputs):
            raise TypeError(f"{self.name} takes {len(self.inputs)} arguments, not {len(args)}")
        fast = _encode_fast(codec, self.inputs, args)
        encoded = fast if fast is not None else codec.encode(self.inputs, args)
        return "0x" + (self.selector + encoded).hex()

    def result(self, codec: ABICodec, data: bytes) -> Any:
        """The decoded return data as web3's ``call`` returns it; BadFunctionCallOutput
        when it does not decode (e.g. empty: no code at the address)."""
        try:
            values = _decode(codec, self.outputs, data)
        except DecodingError as exc:
            raise BadFunctionCallOutput(
                f"could not decode the result of {self.name} ({len(data)} bytes)"
                f" as {', '.join(self.outputs) or 'nothing'}"
            ) from exc
        out = (
            [_normalised(t, v) for t, v in zip(self.outputs, values, strict=True)]
            if self.normalised
            else list(values)
        )
        return out[0] if len(out) == 1 else out


_ARRAY_ELEMENTS = frozenset({"bytes32", *(f"uint{n}" for n in range(8, 257, 8))})
"""The word types :func:`_encode_fast` encodes itself at any depth."""
_STATIC_WORDS = frozenset({"address", "bool", *_ARRAY_ELEMENTS})
"""Single-word types: ``address`` and ``bool`` are handed to the codec one by one."""


def _encode_fast(codec: ABICodec, types: Sequence[str], args: Sequence[Any]) -> bytes | None:
    """The ABI encoding of ``args`` when every type is built of ``bytes32``, ``uintN``,
    ``address``, ``bool``, ``bytes``, dynamic arrays ``T[]`` and tuples of them (the lens's
    ``legsOf(address, bytes32[], uint8[])``; the endpoint's ``lockBatch``, ``prepareBatch``,
    ``commitBatch`` and ``abortBatch``, arrays of 11-word term tuples, ``bytes32[][]``
    proofs, a certificate tuple with ``bytes``), else None; also None for any value these
    rules do not take, so the codec encodes it or raises its own error. eth_abi validates
    every element through several layers: a fifth of a member's CPU under load for
    ``legsOf``, 5 % of a relayer for the batch calls.

    A value taken here is ``bytes`` of exactly 32 bytes for ``bytes32`` (web3's strict
    codec refuses a shorter one, a lax one pads it: either way the codec decides), an
    ``int`` (not a ``bool`` nor a subclass) in range for ``uintN``, ``bytes`` (exactly) for
    ``bytes``, a list or tuple for an array, a list or tuple of the right length for a
    tuple; ``address`` and ``bool`` are the codec's own encoding of that one word. Equal to
    ``codec.encode`` wherever it answers (tests/unit/test_evm_calls.py compares them on
    random types and values)."""
    if len(types) != len(args):
        return None
    head: list[bytes] = []
    tail: list[bytes] = []
    offset = 0
    for abi_type in types:
        size = _head_size(abi_type)
        if size is None:
            return None
        offset += size
    for abi_type, value in zip(types, args, strict=True):
        encoded = _encode_value(codec, abi_type, value)
        if encoded is None:
            return None
        if _is_dynamic(abi_type):
            head.append(offset.to_bytes(32, "big"))
            tail.append(encoded)
            offset += len(encoded)
        else:
            head.append(encoded)
    return b"".join(head) + b"".join(tail)


def _encode_value(codec: ABICodec, abi_type: str, value: Any) -> bytes | None:
    """One value of ``abi_type`` encoded (a dynamic one without its offset), or None."""
    if abi_type == "bytes32":
        return value if type(value) is bytes and len(value) == 32 else None
    if abi_type in _ARRAY_ELEMENTS:  # uintN
        ok = type(value) is int and 0 <= value < _UINT_BOUNDS[abi_type]
        return value.to_bytes(32, "big") if ok else None
    if abi_type in _STATIC_WORDS:  # address, bool
        return codec.encode([abi_type], [value])
    if abi_type == "bytes":
        if type(value) is not bytes:
            return None
        return len(value).to_bytes(32, "big") + value + bytes(-len(value) % 32)
    if abi_type.endswith("[]"):
        if not isinstance(value, list | tuple):
            return None
        element = abi_type[:-2]
        if element in _ARRAY_ELEMENTS:  # the common case, without a call per element
            words = _words(element, value)
            return None if words is None else len(value).to_bytes(32, "big") + words
        body = _encode_fast(codec, [element] * len(value), value)
        return None if body is None else len(value).to_bytes(32, "big") + body
    if abi_type.startswith("("):
        components = _components(abi_type)
        if not isinstance(value, list | tuple) or len(value) != len(components):
            return None
        return _encode_fast(codec, components, value)
    return None


_UINT_BOUNDS = {f"uint{n}": 1 << n for n in range(8, 257, 8)}


@cache
def _is_dynamic(abi_type: str) -> bool:
    """Whether ``abi_type`` is encoded behind an offset (``bytes``, ``T[]``, or a tuple
    holding one); only asked of types :func:`_head_size` takes."""
    if abi_type == "bytes" or abi_type.endswith("[]"):
        return True
    if abi_type.startswith("("):
        return any(_is_dynamic(t) for t in _components(abi_type))
    return False


@cache
def _head_size(abi_type: str) -> int | None:
    """The bytes ``abi_type`` takes in its enclosing head (32 for a word or a dynamic type,
    a static tuple's words inline), or None for a type :func:`_encode_fast` leaves to the
    codec (``string``, fixed-size arrays, ``intN``, ``bytesN`` but ``bytes32``, spellings
    that are not canonical)."""
    if abi_type in _STATIC_WORDS or abi_type == "bytes":
        return 32
    if abi_type.endswith("[]"):
        return 32 if _head_size(abi_type[:-2]) is not None else None
    parts = _tuple_parts(abi_type)
    if parts is not None:
        sizes = [_head_size(t) for t in parts]
        if any(size is None for size in sizes):
            return None
        if _is_dynamic(abi_type):
            return 32
        return sum(cast(list[int], sizes))
    return None


def _words(element: str, values: Sequence[Any]) -> bytes | None:
    """``values`` as 32-byte words of ``element`` (``bytes32`` or ``uintN``), or None for
    one the codec would refuse (it then raises its own error)."""
    if element == "bytes32":
        if not all(type(v) is bytes and len(v) == 32 for v in values):
            return None
        return b"".join(values)
    bound = _UINT_BOUNDS[element]
    if not all(type(v) is int and 0 <= v < bound for v in values):
        return None
    return b"".join(v.to_bytes(32, "big") for v in values)


_ZERO_WORD = bytes(32)
_SINGLE_WORDS = _STATIC_WORDS | {f"bytes{n}" for n in range(1, 33)}
"""The one-word types :func:`_decode_static` decodes itself, spelled exactly as the ABI's
canonical types are (``bytes01`` or ``uint`` are the codec's to parse or refuse)."""


@cache
def _static_words(abi_type: str) -> int | None:
    """The 32-byte words of ``abi_type`` when :func:`_decode_static` decodes it itself:
    ``address``, ``bool``, ``uintN``, ``bytesN`` and tuples of them; else None."""
    if abi_type in _SINGLE_WORDS:
        return 1
    parts = _tuple_parts(abi_type)
    if parts is not None:
        sizes = [_static_words(t) for t in parts]
        return None if None in sizes else sum(cast(list[int], sizes))
    return None


def _tuple_parts(abi_type: str) -> tuple[str, ...] | None:
    """The components of ``abi_type`` when it is a tuple spelled canonically, else None
    (not a tuple, or ``()``, ``(uint8,)``: the codec's to parse or refuse; a component
    spelled with a space is refused by the callers, as no such type is theirs). The one
    rule the fast encoder and decoder both apply."""
    if not (abi_type.startswith("(") and abi_type.endswith(")")):
        return None
    parts = _components(abi_type)
    return parts if parts and ",".join(parts) == abi_type[1:-1] else None


class _NotTaken(Exception):
    """A word :func:`_decode_static` leaves to the codec (which decodes it or refuses it)."""


def _decode_static(types: Sequence[str], data: bytes) -> tuple[Any, ...] | None:
    """``data`` decoded as ``types`` when each is a static type :func:`_static_words`
    takes, or a dynamic array of one (``T[]``, at the top level), and ``data`` is exactly
    their canonical encoding: static words in order, each array's offset pointing just
    after the data before it, its length, then exactly its elements' words; each word what
    web3's strict codec accepts (zero padding, a ``bool`` 0 or 1). Else None, and the codec
    decodes or refuses it. The values are the codec's: ``bytes``, ``int``, ``bool``, an
    address as lowercase ``0x`` text, tuples and arrays as tuples. Equal to
    ``codec.decode`` wherever it answers (tests/unit/test_evm_calls.py compares them). An
    event's logs are all static (eth_abi's decoder layers were most of a relayer's cost per
    log); the lens's answers hold arrays of static tuples (``legsOf``: 7 % of a member)."""
    heads = [_head_words(t) for t in types]
    if None in heads:
        return None
    at, end = 0, 32 * sum(cast(list[int], heads))
    if len(data) < end:
        return None
    out: list[Any] = []
    try:
        for abi_type in types:
            if not abi_type.endswith("[]"):
                (value,), at = _decode_words((abi_type,), data, at)
                out.append(value)
                continue
            # SECURITY: only the canonical layout is taken (the offset is where the data
            # before it ends); a node's other layout is the codec's to decode or refuse.
            if int.from_bytes(data[at : at + 32], "big") != end:
                return None
            at += 32
            if len(data) < end + 32:
                return None
            element = abi_type[:-2]
            count = int.from_bytes(data[end : end + 32], "big")
            size = 32 * cast(int, _static_words(element))
            if count > (len(data) - end - 32) // size:
                return None
            items, end = _decode_words((element,) * count, data, end + 32)
            out.append(items)
    except _NotTaken:
        return None
    return tuple(out) if end == len(data) else None


@cache
def _head_words(abi_type: str) -> int | None:
    """The words ``abi_type`` takes in the head when :func:`_decode_static` decodes it: a
    static type's own words, one (the offset) for ``T[]`` of a static ``T``; else None."""
    if abi_type.endswith("[]"):  # (_static_words takes no array, so no T[k][] nor T[][])
        return 1 if _static_words(abi_type[:-2]) is not None else None
    return _static_words(abi_type)


def _decode(codec: ABICodec, types: Sequence[str], data: bytes) -> tuple[Any, ...]:
    """``data`` decoded as ``types``: by :func:`_decode_static` where it answers, else by
    the codec (which decodes it or raises its own error)."""
    values = _decode_static(types, data)
    return values if values is not None else tuple(codec.decode(types, data))


def _decode_words(types: Sequence[str], data: bytes, at: int) -> tuple[tuple[Any, ...], int]:
    """The values of ``types`` from the word at byte ``at`` on, and the offset after them;
    _NotTaken for a word the strict codec would refuse."""
    out: list[Any] = []
    for abi_type in types:
        if abi_type.startswith("("):
            components, at = _decode_words(_components(abi_type), data, at)
            out.append(components)
            continue
        word = data[at : at + 32]
        at += 32
        if abi_type == "bytes32":
            out.append(word)
        elif abi_type == "address":
            if word[:12] != _ZERO_WORD[:12]:
                raise _NotTaken
            out.append("0x" + word[12:].hex())
        elif abi_type == "bool":
            if word[:31] != _ZERO_WORD[:31] or word[31] > 1:
                raise _NotTaken
            out.append(word[31] == 1)
        elif abi_type.startswith("uint"):
            value = int.from_bytes(word, "big")
            if value >> int(abi_type[4:]):
                raise _NotTaken
            out.append(value)
        else:  # bytesN, N < 32: N bytes, then zero padding
            size = int(abi_type[5:])
            if word[size:] != _ZERO_WORD[size:]:
                raise _NotTaken
            out.append(word[:size])
    return tuple(out), at


def _normalised(abi_type: str, value: Any) -> Any:
    """``value`` as web3's return normalisers leave it: every address checksummed, every
    array a list (the codec decodes arrays as tuples), tuples kept as tuples."""
    if "address" not in abi_type and "[" not in abi_type:
        return value
    if abi_type == "address":
        return _checksummed(value)
    if abi_type.endswith("]"):  # an array of the element type before the last bracket
        inner = abi_type[: abi_type.rindex("[")]
        return [_normalised(inner, v) for v in value]
    if abi_type.startswith("("):
        return tuple(_normalised(t, v) for t, v in zip(_components(abi_type), value, strict=True))
    return value


CHECKSUMMED_KEPT = 4096
"""Distinct decoded addresses whose checksummed form is kept (holders, contracts)."""


@lru_cache(maxsize=CHECKSUMMED_KEPT)
def _checksummed(address: str) -> str:
    """``to_checksum_address`` of a decoded address (a lowercase ``0x`` string), worked out
    once per address: a Keccak-256 and a per-character pass, for every address of every
    answer (a member's reads of the committee windows were 5 % of its CPU under load)."""
    return to_checksum_address(address)


@cache
def _components(abi_type: str) -> tuple[str, ...]:
    """:func:`_split_tuple`, worked out once per type."""
    return tuple(_split_tuple(abi_type))


def _split_tuple(abi_type: str) -> list[str]:
    """The component types of ``(t1,t2,...)`` (nested tuples kept whole)."""
    parts: list[str] = []
    depth, start = 0, 1
    for i, ch in enumerate(abi_type[1:-1], start=1):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(abi_type[start:i])
            start = i + 1
    last = abi_type[start:-1]
    if last:
        parts.append(last)
    return parts


@cache
def functions_of(contract_name: str) -> Mapping[str, AbiFunction]:
    """The functions of a committed contract by name (worked out once per process).
    ValueError for an overloaded name."""
    table: dict[str, AbiFunction] = {}
    for entry in load_abi(contract_name):
        if entry.get("type") != "function":
            continue
        fn = AbiFunction.from_abi(entry)
        if fn.name in table:
            raise ValueError(f"{contract_name}.{fn.name} is overloaded; use web3's contract")
        table[fn.name] = fn
    return table


class BoundCall:
    """One function of one contract with its arguments: web3's ``ContractFunction``
    surface (``call``, ``estimate_gas``, ``build_transaction``) without its per-call ABI
    work. The arguments are encoded once, on first use, and that calldata serves every
    later use (a send estimates gas, then builds the transaction: a 50-item batch's
    arguments were encoded twice); the arguments are not to be changed in place after."""

    __slots__ = ("_data", "_w3", "address", "args", "fn")

    def __init__(self, w3: AsyncWeb3[Any], address: str, fn: AbiFunction, args: Sequence[Any]):
        self._w3 = w3
        self.address = address
        self.fn = fn
        self.args = tuple(args)
        self._data: str | None = None

    def calldata(self) -> str:
        """``0x`` + selector + the encoded arguments (encoded on the first call; TypeError
        or the codec's EncodingError as :meth:`AbiFunction.calldata`, each time)."""
        if self._data is None:
            self._data = self.fn.calldata(self._w3.codec, self.args)
        return self._data

    def _tx(self, transaction: TxParams | None) -> TxParams:
        tx = cast(dict[str, Any], dict(transaction or {}))
        if "data" in tx or "to" in tx:
            raise ValueError("a contract call sets its own 'to' and 'data'")
        tx["to"] = self.address
        tx["data"] = self.calldata()
        return cast(TxParams, tx)

    async def _request(
        self, method: RPCEndpoint, tx: TxParams, block: BlockIdentifier | None
    ) -> Any:
        """``method(tx, block)`` through web3's request manager, as ``w3.eth`` sends it but
        without its request formatters (which map every field of the transaction through
        the ABI normaliser pipeline: most of the remaining cost of a call). The fields here
        are already what they would produce: addresses, ``0x`` data, integers in hex. A
        revert raises web3's ContractLogicError / ContractCustomError, as from ``w3.eth``."""
        at = self._w3.eth.default_block if block is None else block
        params = (_json_fields(tx), hex(at) if isinstance(at, int) else at)
        return await self._w3.manager.coro_request(method, params, error_formatters=_ERRORS[method])

    async def call(
        self, transaction: TxParams | None = None, block_identifier: BlockIdentifier | None = None
    ) -> Any:
        """``eth_call`` of the function at ``block_identifier`` (default: the node's
        ``latest``), decoded as web3 decodes it."""
        data = await self._request(RPC.eth_call, self._tx(transaction), block_identifier)
        return self.fn.result(self._w3.codec, bytes(HexBytes(data)))

    async def estimate_gas(self, transaction: TxParams | None = None) -> int:
        """``eth_estimateGas`` of the function at the node's ``latest`` block (a revert
        raises as in ``call``)."""
        gas = await self._request(RPC.eth_estimateGas, self._tx(transaction), None)
        return int(gas, 16) if isinstance(gas, str) else int(gas)  # web3's to_integer_if_hex

    async def access_list_gas(self, transaction: TxParams | None = None) -> int | None:
        """The gas ``eth_createAccessList`` says the function uses at the node's ``latest``
        block: one execution of it, where ``eth_estimateGas`` searches over many (anvil 1.7.1,
        a 50-item ``lockBatch``: 8-14 ms of the node's CPU against 80-150 ms).

        A revert raises as in ``call`` when the node answers it as a JSON-RPC error (anvil);
        None when the node reports it inside the result instead (go-ethereum's ``error``
        field, without the revert data) or answers no ``gasUsed``: the caller then asks
        ``eth_estimateGas``, whose revert is typed. The figure is what the call used, after
        refunds and with the access list applied, so a gas limit needs headroom over it;
        None too for a ``gasUsed`` that is not a JSON-RPC quantity (a sign, decimal text)."""
        result = await self._request(RPC.eth_createAccessList, self._tx(transaction), None)
        if not isinstance(result, Mapping) or result.get("error") or "gasUsed" not in result:
            return None
        try:
            gas = quantity(result["gasUsed"])
        except ValueError:
            return None  # not a JSON-RPC quantity (review helper-108 L2): ask the estimate
        return gas

    async def build_transaction(self, transaction: TxParams) -> TxParams:
        """The transaction to sign: ``transaction`` with ``to``, ``data`` and ``value``
        (0 unless given). ValueError when gas, chain id or fee fields are missing (they
        are never fetched here)."""
        tx = cast(dict[str, Any], self._tx(transaction))
        missing = [k for k in ("gas", "chainId", "nonce") if k not in tx]
        if "gasPrice" not in tx and "maxFeePerGas" not in tx:
            missing.append("gasPrice or maxFeePerGas")
        if missing:
            raise ValueError(f"a transaction to build needs {', '.join(missing)}")
        tx.setdefault("value", 0)
        return cast(TxParams, tx)


_ERRORS = {m: get_error_formatters(m) for m in (RPC.eth_call, RPC.eth_estimateGas)}
_ERRORS[RPC.eth_createAccessList] = _ERRORS[RPC.eth_call]
"""web3's own error formatters of ``eth_call`` and ``eth_estimateGas``: a revert's data
raised as ContractLogicError / ContractCustomError (``eth_createAccessList``, which web3 has
none for, takes ``eth_call``'s: the same error object, the same revert data)."""


def _json_fields(tx: TxParams) -> dict[str, Any]:
    """The transaction fields as JSON-RPC takes them: integers in hex, bytes as ``0x`` hex,
    strings (addresses, data already in hex) unchanged."""
    out: dict[str, Any] = {}
    for key, value in tx.items():
        if isinstance(value, bool) or not isinstance(value, int | bytes):
            out[key] = value
        elif isinstance(value, int):
            out[key] = hex(value)
        else:
            out[key] = "0x" + value.hex()
    return out


class _Functions:
    """``contract.functions``: ``functions.name(*args)`` is a :class:`BoundCall`."""

    __slots__ = ("_address", "_table", "_w3")

    def __init__(self, w3: AsyncWeb3[Any], address: str, table: Mapping[str, AbiFunction]):
        self._w3 = w3
        self._address = address
        self._table = table

    def __getattr__(self, name: str) -> _Binder:
        try:
            fn = self._table[name]
        except KeyError:
            raise AttributeError(f"the contract has no function {name!r}") from None
        return _Binder(self._w3, self._address, fn)


@dataclass(frozen=True, slots=True)
class _Binder:
    w3: AsyncWeb3[Any]
    address: str
    fn: AbiFunction

    def __call__(self, *args: Any) -> BoundCall:
        return BoundCall(self.w3, self.address, self.fn, args)


@dataclass(frozen=True, slots=True)
class AbiEvent:
    """One contract event: its topic and its indexed and data inputs as the ABI gives them.
    Only static types are indexed in the committed contracts (a dynamic indexed value is a
    hash in its topic), so a dynamic indexed input is refused when the table is built."""

    name: str
    topic: bytes
    indexed: tuple[Mapping[str, Any], ...]
    data: tuple[Mapping[str, Any], ...]
    data_types: tuple[str, ...]
    indexed_types: tuple[str, ...]

    @classmethod
    def from_abi(cls, entry: Mapping[str, Any]) -> AbiEvent:
        """The event an ABI ``event`` entry describes; ValueError for an anonymous event or
        a dynamic indexed input."""
        if entry.get("anonymous"):
            raise ValueError(f"event {entry['name']} is anonymous")
        inputs = [dict(i) for i in entry.get("inputs", ())]
        indexed = tuple(i for i in inputs if i.get("indexed"))
        for i in indexed:
            t = collapse_if_tuple(i)
            if t in ("bytes", "string") or t.startswith("(") or t.endswith("]"):
                raise ValueError(f"event {entry['name']}: indexed {t} is a hash in its topic")
        data = tuple(i for i in inputs if not i.get("indexed"))
        return cls(
            name=str(entry["name"]),
            topic=bytes(event_abi_to_log_topic(cast(ABIEvent, dict(entry)))),
            indexed=indexed,
            data=data,
            data_types=tuple(collapse_if_tuple(i) for i in data),
            indexed_types=tuple(collapse_if_tuple(i) for i in indexed),
        )

    def args(self, codec: ABICodec, log: Mapping[str, Any]) -> dict[str, Any]:
        """The event's arguments from ``log`` as web3's ``process_log`` names them (struct
        arguments as mappings of their components, addresses checksummed, arrays as lists).
        web3's MismatchedABI when the log is another event's, LogTopicError when its topics
        are not this event's count."""
        topics = [bytes(HexBytes(t)) for t in log["topics"]]
        if not topics or topics[0] != self.topic:
            raise MismatchedABI(f"the log is not a {self.name} event")
        if len(topics) - 1 != len(self.indexed):
            raise LogTopicError(f"Expected {len(self.indexed)} log topics.  Got {len(topics) - 1}")
        out: dict[str, Any] = {}
        for entry, t, topic in zip(self.indexed, self.indexed_types, topics[1:], strict=True):
            out[str(entry["name"])] = _normalised(t, _decode(codec, (t,), topic)[0])
        values = _decode(codec, self.data_types, bytes(HexBytes(log["data"])))
        for entry, t, value in zip(self.data, self.data_types, values, strict=True):
            out[str(entry["name"])] = _named(entry, _normalised(t, value))
        return out


def _named(entry: Mapping[str, Any], value: Any) -> Any:
    """``value`` of ABI input ``entry`` with its structs as mappings of component names
    (web3's ``named_tree``)."""
    abi_type = str(entry["type"])
    if not abi_type.startswith("tuple"):
        return value
    if abi_type.endswith("]"):
        inner = {**entry, "type": abi_type[: abi_type.rindex("[")]}
        return [_named(inner, v) for v in value]
    return {str(c["name"]): _named(c, v) for c, v in zip(entry["components"], value, strict=True)}


@cache
def events_of(contract_name: str) -> Mapping[str, AbiEvent]:
    """The events of a committed contract by name (worked out once per process)."""
    return {
        str(e["name"]): AbiEvent.from_abi(e)
        for e in load_abi(contract_name)
        if e.get("type") == "event"
    }


@dataclass(frozen=True, slots=True)
class BoundEvent:
    """One event of one contract: web3's ``ContractEvent`` surface the adapter uses
    (``topic``, ``process_log(log)["args"]``)."""

    codec: ABICodec
    event: AbiEvent

    @property
    def topic(self) -> str:
        """The event's topic 0 as ``0x`` hex (web3's ``ContractEvent.topic``)."""
        return "0x" + self.event.topic.hex()

    def process_log(self, log: Mapping[str, Any]) -> dict[str, Any]:
        """``{"args": ..., "event": name}`` (:meth:`AbiEvent.args`)."""
        return {"args": self.event.args(self.codec, log), "event": self.event.name}


class _Events:
    """``contract.events``: ``events.Name()`` is a :class:`BoundEvent`."""

    __slots__ = ("_codec", "_table")

    def __init__(self, codec: ABICodec, table: Mapping[str, AbiEvent]):
        self._codec = codec
        self._table = table

    def __getattr__(self, name: str) -> Callable[[], BoundEvent]:
        try:
            event = self._table[name]
        except KeyError:
            raise AttributeError(f"the contract has no event {name!r}") from None
        bound = BoundEvent(self._codec, event)
        return lambda: bound


class ContractCalls:
    """A deployed contract for the adapter's calls: ``address`` (checksummed), ``functions``
    (:class:`BoundCall` factories) and ``events`` (:class:`BoundEvent` factories)."""

    def __init__(self, w3: AsyncWeb3[Any], contract_name: str, address: str) -> None:
        self.address = to_checksum_address(address)
        self.contract_name = contract_name
        self.functions = _Functions(w3, self.address, functions_of(contract_name))
        self.events = _Events(w3.codec, events_of(contract_name))
