"""``bridge.ledgers.evm.calls`` against web3's own ``ContractFunction``, for every function and
event of every committed ABI: the same requests, the same decoded results and event arguments,
the same transaction fields, the same exceptions; refusals for what web3 would not send either.

web3 runs here over a recording provider (pure logic: the provider returns the encoded
result it is given); the calls on real nodes are covered by the adapter conformance suite.
"""

from __future__ import annotations

import asyncio
import enum
import random
import re
from collections.abc import Mapping
from typing import Any

import pytest
from eth_abi.exceptions import DecodingError, EncodingError, NonEmptyPaddingBytes
from eth_utils.abi import collapse_if_tuple
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import BadFunctionCallOutput, ContractLogicError, LogTopicError, MismatchedABI
from web3.providers.async_base import AsyncBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from bridge.ledgers.evm import calls
from bridge.ledgers.evm.artifacts import CONTRACT_NAMES, load_abi
from bridge.ledgers.evm.calls import AbiEvent, AbiFunction, ContractCalls, events_of, functions_of

pytestmark = pytest.mark.batch

ADDRESS = "0x" + "ab" * 20


class RecordingProvider(AsyncBaseProvider):
    """Answers ``eth_call`` with ``result`` and ``eth_estimateGas`` with 21,000; keeps the
    params of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.result = "0x"
        self.gas: Any = hex(21_000)
        self.error: dict[str, Any] | None = None
        self.requests: list[tuple[str, Any]] = []

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        self.requests.append((str(method), params))
        if self.error is not None:
            return {"jsonrpc": "2.0", "id": 1, "error": self.error}  # type: ignore[typeddict-item]
        result = self.result if method == "eth_call" else self.gas
        return {"jsonrpc": "2.0", "id": 1, "result": result}

    async def is_connected(self, show_traceback: bool = False) -> bool:
        return True


CODEC = AsyncWeb3(RecordingProvider()).codec
"""web3's own codec (its strict registry), which the adapter's calls use too."""


def value_of(abi_type: str, rng: random.Random) -> Any:
    """A random value of ``abi_type`` as the adapter passes it (bytes, checksummed
    addresses, tuples and lists)."""
    array = re.fullmatch(r"(.+)\[(\d*)\]", abi_type)
    if array:
        n = int(array.group(2)) if array.group(2) else rng.randint(0, 3)
        return [value_of(array.group(1), rng) for _ in range(n)]
    if abi_type.startswith("("):
        return tuple(value_of(t, rng) for t in split(abi_type))
    if abi_type == "address":
        return to_checksum_address(rng.randbytes(20))
    if abi_type == "bool":
        return rng.random() < 0.5
    if abi_type in ("bytes", "string"):
        raw = rng.randbytes(rng.randint(0, 70))
        return raw if abi_type == "bytes" else raw.hex()
    if abi_type.startswith("bytes"):
        return rng.randbytes(int(abi_type[5:]))
    if abi_type.startswith("uint"):
        return rng.randrange(2 ** int(abi_type[4:] or 256))
    if abi_type.startswith("int"):
        bits = int(abi_type[3:] or 256)
        return rng.randrange(-(2 ** (bits - 1)), 2 ** (bits - 1))
    raise AssertionError(f"no generator for {abi_type}")


def split(abi_type: str) -> list[str]:
    depth, start, out = 0, 1, []
    for i, ch in enumerate(abi_type[1:-1], start=1):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(abi_type[start:i])
            start = i + 1
    if abi_type[start:-1]:
        out.append(abi_type[start:-1])
    return out


def every_function() -> list[tuple[str, AbiFunction]]:
    return [(c, f) for c in CONTRACT_NAMES for f in functions_of(c).values()]


def web3_and_lean(contract: str) -> tuple[RecordingProvider, Any, ContractCalls]:
    provider = RecordingProvider()
    w3 = AsyncWeb3(provider, middleware=[])
    return (
        provider,
        w3.eth.contract(address=to_checksum_address(ADDRESS), abi=load_abi(contract)),
        ContractCalls(w3, contract, ADDRESS),
    )


@pytest.mark.parametrize(
    ("contract", "fn"), every_function(), ids=lambda x: x if isinstance(x, str) else x.name
)
def test_calldata_and_results_are_what_web3_sends_and_returns(
    contract: str, fn: AbiFunction
) -> None:
    rng = random.Random(f"{contract}.{fn.name}")
    provider, web3_contract, lean = web3_and_lean(contract)

    async def both() -> None:
        for _ in range(4):
            args = [value_of(t, rng) for t in fn.inputs]
            outputs = [value_of(t, rng) for t in fn.outputs]
            provider.result = "0x" + CODEC.encode(fn.outputs, outputs).hex()
            ours = await getattr(lean.functions, fn.name)(*args).call(block_identifier=7)
            theirs = await getattr(web3_contract.functions, fn.name)(*args).call(block_identifier=7)
            assert provider.requests[-1] == provider.requests[-2]  # calldata, to, block
            assert ours == theirs
            assert type(ours) is type(theirs)

    asyncio.run(both())


def test_addresses_in_results_are_checksummed_and_arrays_are_lists_at_every_depth() -> None:
    fn = AbiFunction("f", b"\x00" * 4, (), ("address", "(uint8,address[])", "address[2]"), True)
    w3 = AsyncWeb3(RecordingProvider())
    a, b, c = (bytes([i]) * 20 for i in (0xAA, 0xBB, 0xCC))
    data = w3.codec.encode(fn.outputs, ["0x" + a.hex(), (1, ["0x" + b.hex()]), [c, c]])
    got = fn.result(w3.codec, data)
    assert got[0] == to_checksum_address(a) and got[0] != "0x" + a.hex()
    assert got[1] == (1, [to_checksum_address(b)])
    assert got[2] == [to_checksum_address(c), to_checksum_address(c)]


def test_undecodable_return_data_is_web3s_bad_function_call_output() -> None:
    provider, _, lean = web3_and_lean("BridgeEndpoint")
    provider.result = "0x"  # what a node answers for an address without code
    with pytest.raises(BadFunctionCallOutput, match="ledgerId"):
        asyncio.run(lean.functions.ledgerId().call())


@pytest.mark.parametrize(
    "data",
    [
        "0x" + bytes.fromhex("08c379a0").hex() + CODEC.encode(["string"], ["no"]).hex(),
        "0x" + "deadbeef" + "00" * 32,  # a custom error
        None,  # a revert without data
    ],
    ids=["Error(string)", "custom", "no data"],
)
@pytest.mark.parametrize("method", ["call", "estimate_gas"])
def test_a_revert_raises_what_web3_raises(data: str | None, method: str) -> None:
    provider, web3_contract, lean = web3_and_lean("BridgeEndpoint")
    provider.error = {"code": 3, "message": "execution reverted"}
    if data is not None:
        provider.error["data"] = data
    raised = []
    for contract in (lean, web3_contract):
        with pytest.raises(ContractLogicError) as info:  # or its subclass ContractCustomError
            asyncio.run(getattr(contract.functions.ledgerId(), method)())
        raised.append(info.value)
    ours, theirs = raised
    assert type(ours) is type(theirs)
    assert (ours.args, getattr(ours, "data", None)) == (theirs.args, getattr(theirs, "data", None))
    assert provider.requests[0] == provider.requests[1]


def test_wrong_arguments_are_refused_before_anything_is_sent() -> None:
    provider, _, lean = web3_and_lean("BridgeEndpoint")
    with pytest.raises(TypeError, match="tokenOf takes 1 arguments, not 2"):
        asyncio.run(lean.functions.tokenOf(b"\x01" * 32, b"\x02" * 32).call())
    with pytest.raises(EncodingError):
        asyncio.run(lean.functions.tokenOf(b"\x01" * 33).call())
    with pytest.raises(AttributeError, match="no function 'noSuchFunction'"):
        lean.functions.noSuchFunction  # noqa: B018
    with pytest.raises(ValueError, match="sets its own 'to' and 'data'"):
        asyncio.run(lean.functions.ledgerId().call({"to": ADDRESS}))  # type: ignore[typeddict-item]
    assert provider.requests == []


def test_a_built_transaction_has_the_callers_fields_and_never_fetches_any() -> None:
    provider, web3_contract, lean = web3_and_lean("BridgeEndpoint")
    fields: Any = {
        "from": to_checksum_address("0x" + "11" * 20),
        "nonce": 5,
        "gas": 90_000,
        "maxFeePerGas": 3,
        "maxPriorityFeePerGas": 1,
        "chainId": 31337,
    }
    word = b"\x07" * 32

    async def both() -> tuple[Any, Any]:
        ours = await lean.functions.tokenOf(word).build_transaction(fields)
        theirs = await web3_contract.functions.tokenOf(word).build_transaction(fields)
        return ours, theirs

    ours, theirs = asyncio.run(both())
    assert dict(ours) == dict(theirs)
    assert provider.requests == []  # every field given: nothing fetched, by either
    for missing in ("gas", "chainId", "nonce", "maxFeePerGas"):
        partial = {k: v for k, v in fields.items() if k != missing}
        with pytest.raises(ValueError, match="a transaction to build needs"):
            asyncio.run(lean.functions.tokenOf(word).build_transaction(partial))
    assert provider.requests == []


def test_gas_is_estimated_for_the_same_transaction_web3_estimates() -> None:
    provider, web3_contract, lean = web3_and_lean("BridgeEndpoint")
    sender: Any = {"from": to_checksum_address("0x" + "22" * 20)}

    async def both() -> tuple[int, int]:
        return (
            await lean.functions.ledgerId().estimate_gas(sender),
            await web3_contract.functions.ledgerId().estimate_gas(sender),
        )

    assert asyncio.run(both()) == (21_000, 21_000)
    assert provider.requests[0] == provider.requests[1]
    assert provider.requests[0][0] == "eth_estimateGas"
    provider.gas = 21_000  # a node answering a JSON number, not hex (review s21 L1)
    assert asyncio.run(both()) == (21_000, 21_000)


def test_a_call_encodes_its_arguments_once_for_the_estimate_and_the_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 14: a send estimates gas, then builds the transaction, from one encoding of the
    arguments (a 50-item batch's are the relayer's largest ABI cost); both carry exactly
    the calldata web3 would send."""
    provider, web3_contract, lean = web3_and_lean("BridgeEndpoint")
    sender: Any = {"from": to_checksum_address("0x" + "22" * 20)}
    fields: Any = {**sender, "nonce": 5, "gas": 90_000, "gasPrice": 3, "chainId": 31337}
    word = b"\x07" * 32
    encodes: list[str] = []
    original = AbiFunction.calldata

    def counted(self: AbiFunction, codec: Any, args: Any) -> str:
        encodes.append(self.name)
        return original(self, codec, args)

    monkeypatch.setattr(AbiFunction, "calldata", counted)
    call = lean.functions.tokenOf(word)

    async def send() -> tuple[int, Any, Any]:
        gas = await call.estimate_gas(sender)
        return gas, await call.build_transaction(fields), await call.build_transaction(fields)

    gas, built, again = asyncio.run(send())
    assert gas > 0
    assert encodes == ["tokenOf"]
    theirs = asyncio.run(web3_contract.functions.tokenOf(word).build_transaction(fields))
    assert built["data"] == again["data"] == theirs["data"]
    assert provider.requests[0][1][0]["data"] == theirs["data"]


@pytest.mark.parametrize("seed", range(8))
def test_word_arrays_are_encoded_exactly_as_the_codec_encodes_them(seed: int) -> None:
    """Issue 14: ``bytes32[]`` and ``uintN[]`` arguments (the lens's ``legsOf``) are encoded
    without eth_abi's per-element layers, to the same bytes as the codec, beside static
    words of every kind taken and other arrays; any other type is the codec's alone."""
    rng = random.Random(seed)
    codec = AsyncWeb3().codec
    types = ["address", "bytes32[]", "uint8[]", "uint256", "bool", "uint64[]", "bytes32"]
    for _ in range(20):
        n, m = rng.randrange(0, 60), rng.randrange(0, 5)
        args = [
            to_checksum_address(rng.randbytes(20)),
            [rng.randbytes(32) for _ in range(n)],
            tuple(rng.randrange(256) for _ in range(n)),
            rng.randrange(2**256),
            rng.random() < 0.5,
            [rng.choice((0, 2**64 - 1, rng.randrange(2**64))) for _ in range(m)],
            rng.randbytes(32),
        ]
        order = list(range(len(types)))
        rng.shuffle(order)
        ts, vs = [types[i] for i in order], [args[i] for i in order]
        fast = calls._encode_fast(codec, ts, vs)
        assert fast is not None and fast == codec.encode(ts, vs)
    others = ("string[]", "bytes32[2]", "uint[]", "int256[]", "bytes31", "(bytes32,string)",
              "(uint8,)", "((uint8,),uint8)", "(bytes32,bytes32,)", "()", "(uint8, uint8)")  # fmt: skip
    for other in others:
        value: Any = ["a"] if other == "string[]" else [1, 2]
        assert calls._encode_fast(codec, [other], [value]) is None, other  # the codec's alone


_WORDS = ("bytes32", "uint8", "uint64", "uint256", "address", "bool")


def _random_type(rng: random.Random, depth: int = 0) -> str:
    """A type built of what the fast encoder takes: words, ``bytes``, ``T[]``, tuples."""
    pick = rng.randrange(10) if depth < 3 else 0
    if pick <= 4:
        return rng.choice(_WORDS)
    if pick == 5:
        return "bytes"
    if pick <= 7:
        return _random_type(rng, depth + 1) + "[]"
    return "(" + ",".join(_random_type(rng, depth + 1) for _ in range(rng.randrange(1, 4))) + ")"


def _random_value(rng: random.Random, abi_type: str) -> Any:
    if abi_type.endswith("[]"):
        return [_random_value(rng, abi_type[:-2]) for _ in range(rng.randrange(0, 4))]
    if abi_type.startswith("("):
        return tuple(_random_value(rng, t) for t in calls._components(abi_type))
    if abi_type == "bytes":
        return rng.randbytes(rng.choice((0, 1, 31, 32, 33, 65, 100)))
    if abi_type == "bytes32":
        return rng.randbytes(32)
    if abi_type == "address":
        return to_checksum_address(rng.randbytes(20))
    if abi_type == "bool":
        return rng.random() < 0.5
    bits = int(abi_type[4:])
    return rng.choice((0, 2**bits - 1, rng.randrange(2**bits)))


@pytest.mark.parametrize("seed", range(12))
def test_tuples_bytes_and_nested_arrays_are_encoded_exactly_as_the_codec(seed: int) -> None:
    """Issue 14: the batch calls' arguments (arrays of term tuples, ``bytes32[][]``
    proofs, a certificate tuple holding ``bytes``) and any other nesting of the types the
    fast encoder takes give the codec's bytes, offsets included."""
    rng = random.Random(seed)
    codec = AsyncWeb3().codec
    for _ in range(40):
        types = [_random_type(rng) for _ in range(rng.randrange(1, 5))]
        values = [_random_value(rng, t) for t in types]
        fast = calls._encode_fast(codec, types, values)
        assert fast is not None, types
        assert fast == codec.encode(types, values), types


def test_the_batch_calls_are_encoded_without_the_codec() -> None:
    """The four batch functions of the endpoint take the fast path, to the codec's bytes."""
    rng = random.Random(7)
    codec = AsyncWeb3().codec
    fns = functions_of("BridgeEndpoint")
    term = (
        *(rng.randbytes(32) for _ in range(2)),
        10**30,
        *(rng.randbytes(32) for _ in range(7)),
        9,
    )
    cert = (3, 2, rng.randbytes(32), 50, rng.randbytes(195))
    proofs = [[rng.randbytes(32) for _ in range(6)], []]
    for name, args in (
        ("lockBatch", [[term, term], [rng.randbytes(65), b""]]),
        ("prepareBatch", [[term, term], proofs, cert]),
        ("commitBatch", [[term, term], proofs, cert]),
        ("abortBatch", [[term], proofs[:1], cert]),
    ):
        fast = calls._encode_fast(codec, fns[name].inputs, args)
        assert fast is not None and fast == codec.encode(fns[name].inputs, args), name


@pytest.mark.parametrize(
    ("abi_type", "bad"),
    [
        ("bytes", bytearray(b"\x01")),  # another bytes-like: the codec decides
        ("bytes", HexBytes(b"\x01")),  # a bytes subclass
        ("bytes", "0x01"),  # text
        ("(bytes32,uint8)", (b"\x01" * 32,)),  # a tuple one short
        ("(bytes32,uint8)", (b"\x01" * 32, 1, 2)),  # one too many
        ("(bytes32,uint8)", {"a": b"\x01" * 32, "b": 1}),  # a mapping
        ("(bytes32,uint8)", (b"\x01" * 31, 1)),  # a bad component
        ("bytes32[][]", [[b"\x01" * 32], "not a list"]),
        ("(uint8,bytes)[]", [(1, b""), (256, b"")]),  # out of range deep down
    ],
)
def test_a_value_the_fast_encoder_does_not_take_is_the_codecs(abi_type: str, bad: Any) -> None:
    """Such a value goes to the codec: its encoding or its own error, never other bytes."""
    codec = AsyncWeb3().codec
    assert calls._encode_fast(codec, [abi_type], [bad]) is None


@pytest.mark.parametrize(
    ("abi_type", "bad"),
    [
        ("bytes32[]", b"\x01" * 33),  # too long
        ("bytes32[]", b"\x01" * 31),  # too short: web3's strict codec refuses it
        ("bytes32[]", "0x" + "01" * 32),  # text, not bytes
        ("bytes32[]", bytearray(32)),  # another bytes-like: the codec decides
        ("uint8[]", 256),  # out of range
        ("uint8[]", -1),
        ("uint8[]", True),  # a bool is no integer to the codec
        ("uint8[]", enum.IntEnum("Leg", "IN")["IN"]),  # an int subclass: the codec decides
        ("bytes32[]", HexBytes(b"\x04" * 32)),  # a bytes subclass: the codec decides
        ("uint8[]", 1.0),
        ("uint8[]", "1"),
    ],
)
def test_an_array_element_the_fast_path_does_not_take_goes_to_the_codec(
    abi_type: str, bad: Any
) -> None:
    """Such a value is left to the codec: a calldata then has exactly the codec's answer,
    its encoding or its own error."""
    codec = AsyncWeb3().codec
    fn = functions_of("BridgeLens")["legsOf"]
    ids: list[Any] = [b"\x02" * 32]
    legs: list[Any] = [1]
    if abi_type == "bytes32[]":
        ids.append(bad)
        legs.append(0)
    else:
        ids.append(b"\x03" * 32)
        legs.append(bad)
    args = [ADDRESS, ids, legs]
    assert calls._encode_fast(codec, fn.inputs, args) is None
    try:
        expected: Any = "0x" + (fn.selector + codec.encode(fn.inputs, args)).hex()
    except Exception as exc:  # the codec's own error, raised the same through calldata
        with pytest.raises(type(exc)):
            fn.calldata(codec, args)
    else:
        assert fn.calldata(codec, args) == expected


def test_an_overloaded_function_is_refused_when_the_table_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bridge.ledgers.evm.calls as calls

    entry = {"type": "function", "name": "f", "inputs": [], "outputs": []}
    twin = {**entry, "inputs": [{"name": "x", "type": "uint8"}]}
    monkeypatch.setattr(calls, "load_abi", lambda _name: [entry, twin])
    with pytest.raises(ValueError, match="overloaded"):
        calls.functions_of.__wrapped__("Overloaded")


def every_event() -> list[tuple[str, AbiEvent]]:
    return [(c, e) for c in CONTRACT_NAMES for e in events_of(c).values()]


def log_of(event: AbiEvent, rng: random.Random) -> dict[str, Any]:
    """A log of ``event`` with random arguments, as ``eth_getLogs`` returns it via web3."""
    topics = [HexBytes(event.topic)] + [
        HexBytes(
            CODEC.encode([collapse_if_tuple(dict(i))], [value_of(collapse_if_tuple(dict(i)), rng)])
        )
        for i in event.indexed
    ]
    data = CODEC.encode(event.data_types, [value_of(t, rng) for t in event.data_types])
    return {
        "address": to_checksum_address(ADDRESS),
        "topics": topics,
        "data": HexBytes(data),
        "blockNumber": 9,
        "logIndex": 2,
        "transactionIndex": 0,
        "transactionHash": HexBytes(b"\x01" * 32),
        "blockHash": HexBytes(b"\x02" * 32),
    }


def plain(value: Any) -> Any:
    """web3's AttributeDicts as dicts, recursively (for comparing)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("contract", "event"), every_event(), ids=lambda x: x if isinstance(x, str) else x.name
)
def test_event_arguments_are_what_web3s_process_log_gives(contract: str, event: AbiEvent) -> None:
    rng = random.Random(f"{contract}.{event.name}")
    _, web3_contract, lean = web3_and_lean(contract)
    ours_event = getattr(lean.events, event.name)()
    theirs_event = getattr(web3_contract.events, event.name)()
    assert HexBytes(ours_event.topic) == HexBytes(theirs_event.topic)
    for _ in range(4):
        log = log_of(event, rng)
        ours = ours_event.process_log(log)["args"]
        theirs = theirs_event.process_log(log)["args"]
        assert ours == plain(theirs)


def _random_static_type(rng: random.Random, depth: int = 0) -> str:
    """A static ABI type :func:`calls._decode_static` takes, tuples nested up to twice."""
    roll = rng.randrange(7 if depth < 2 else 5)
    if roll == 0:
        return "address"
    if roll == 1:
        return "bool"
    if roll == 2:
        return f"uint{8 * rng.randint(1, 32)}"
    if roll == 3:
        return "bytes32"
    if roll == 4:
        return f"bytes{rng.randint(1, 32)}"
    return (
        "(" + ",".join(_random_static_type(rng, depth + 1) for _ in range(rng.randint(1, 4))) + ")"
    )


def _codec_answer(types: list[str], data: bytes) -> Any:
    """The codec's decoding of ``data``, or the type of its refusal."""
    try:
        return CODEC.decode(types, data)
    except Exception as exc:
        return type(exc)


@pytest.mark.parametrize("seed", range(8))
def test_static_words_are_decoded_exactly_as_the_codec_decodes_them(seed: int) -> None:
    """Issue 14: an event's static words (every committed event's are) are decoded without
    eth_abi's layers, to the codec's very values; a word the strict codec refuses (padding
    not zero, a bool other than 0 or 1, a uintN out of range), data of another length and
    any type not taken are the codec's alone, which then decodes or refuses them."""
    rng = random.Random(seed)
    for _ in range(40):
        types = [_random_static_type(rng) for _ in range(rng.randint(1, 6))]
        data = CODEC.encode(types, [value_of(t, rng) for t in types])
        fast = calls._decode_static(types, data)
        assert fast is not None and fast == CODEC.decode(types, data)
        assert [type(v) for v in fast] == [type(v) for v in CODEC.decode(types, data)]
        # One byte changed anywhere: decoded alike, or left to the codec, which refuses it
        # or decodes it to what the fast path would have.
        at = rng.randrange(len(data))
        bent = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
        mine = calls._decode_static(types, bent)
        theirs = _codec_answer(types, bent)
        assert mine is None or mine == theirs, (types, at)
        if mine is None:
            assert isinstance(theirs, type) and issubclass(theirs, Exception), (types, at)
        for cut in (data[:-1], data + b"\0", data[:-32], data + bytes(32)):  # other lengths
            assert calls._decode_static(types, cut) is None
    others = ("int8", "bytes", "string", "uint8[]", "bytes32[2]", "uint", "()", "(uint256,)",
              "bytes01", "bytes\u0663", "bytes\u00b2", "bytes0", "bytes33", "(uint256, bool)")  # fmt: skip
    for other in others:  # not canonical, or not static: the codec's to parse or refuse
        assert calls._decode_static([other], bytes(64)) is None
    word = (1).to_bytes(32, "big")
    refused = {  # a word each type's strict decoder refuses: left to the codec, which raises
        "bool": (2).to_bytes(32, "big"),
        "address": b"\1" + bytes(31),
        "uint8": (256).to_bytes(32, "big"),
        "uint64": (2**64).to_bytes(32, "big"),
        "bytes4": bytes(4) + word[4:],
        "(uint8,bool)": (1).to_bytes(32, "big") + (3).to_bytes(32, "big"),
    }
    for abi_type, data in refused.items():
        assert calls._decode_static([abi_type], data) is None, abi_type
        with pytest.raises(DecodingError):
            CODEC.decode([abi_type], data)


@pytest.mark.parametrize("seed", range(8))
def test_arrays_of_static_types_are_decoded_exactly_as_the_codec(seed: int) -> None:
    """Issue 14: answers holding dynamic arrays of static types (the lens's ``legsOf``
    ``(uint256, (uint8,bytes32,uint8,uint64)[])``) are decoded without eth_abi's layers
    when laid out canonically, to the codec's values; any other layout (an offset
    elsewhere, a length beyond the data, bytes left over or missing) and any refused word
    are the codec's alone, which decodes or refuses them."""
    rng = random.Random(seed)
    for _ in range(40):
        types = [
            _random_static_type(rng) + ("[]" if rng.random() < 0.4 else "")
            for _ in range(rng.randint(1, 4))
        ]
        values = [
            [value_of(t[:-2], rng) for _ in range(rng.randrange(0, 5))]
            if t.endswith("[]")
            else value_of(t, rng)
            for t in types
        ]
        data = CODEC.encode(types, values)
        fast = calls._decode_static(types, data)
        assert fast is not None and fast == CODEC.decode(types, data), types
        assert [type(v) for v in fast] == [type(v) for v in CODEC.decode(types, data)]
        for _ in range(4):  # one byte changed anywhere
            at = rng.randrange(len(data))
            bent = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
            mine = calls._decode_static(types, bent)
            assert mine is None or mine == _codec_answer(types, bent), (types, at)
        for cut in (data[:-1], data + b"\0", data[:-32], data + bytes(32)):  # other lengths
            mine = calls._decode_static(types, cut)
            assert mine is None or mine == _codec_answer(types, cut), types


def test_an_array_laid_out_otherwise_is_the_codecs() -> None:
    """A node's non-canonical layout (the codec may still decode it) or a length it cannot
    hold is never decoded here."""
    types = ["uint256", "(uint8,bytes32)[]"]
    data = CODEC.encode(types, [7, [(1, b"\x01" * 32), (2, b"\x02" * 32)]])
    assert calls._decode_static(types, data) == CODEC.decode(types, data)
    later = data[:32] + (96).to_bytes(32, "big") + bytes(32) + data[64:]  # a gap before it
    assert calls._decode_static(types, later) is None
    assert CODEC.decode(types, later) == CODEC.decode(types, data)  # the codec takes it
    huge = data[:64] + (2**255).to_bytes(32, "big") + data[96:]
    assert calls._decode_static(types, huge) is None
    assert isinstance(_codec_answer(types, huge), type)
    for other in ("uint8[2][]", "uint8[][]", "bytes[]", "string[]", "(uint8,bytes)[]"):
        assert calls._decode_static([other], (32).to_bytes(32, "big") + bytes(32)) is None


def test_a_malformed_log_word_gets_the_codecs_answer() -> None:
    """A log whose word the strict codec refuses is refused as before (the codec's own
    error); one it accepts decodes to what web3 gives."""
    rng = random.Random(11)
    _, web3_contract, lean = web3_and_lean("BridgeEndpoint")
    event = events_of("BridgeEndpoint")["LegStateChanged"]  # data: uint8, uint8, uint8, ...
    log = log_of(event, rng)
    data = bytearray(bytes(log["data"]))
    data[0] = 1  # the first uint8's padding
    log["data"] = HexBytes(bytes(data))
    for contract in (lean, web3_contract):
        with pytest.raises(NonEmptyPaddingBytes):
            contract.events.LegStateChanged().process_log(log)
    log = log_of(event, rng)
    log["data"] = HexBytes(bytes(log["data"]) + bytes(32))  # a word too many
    try:
        theirs = plain(web3_contract.events.LegStateChanged().process_log(log)["args"])
    except Exception as exc:
        with pytest.raises(type(exc)):
            lean.events.LegStateChanged().process_log(log)
    else:
        assert lean.events.LegStateChanged().process_log(log)["args"] == theirs


def test_a_log_of_another_event_or_topic_count_is_refused_as_web3_refuses_it() -> None:
    rng = random.Random(3)
    _, web3_contract, lean = web3_and_lean("BridgeEndpoint")
    changed = events_of("BridgeEndpoint")["LegStateChanged"]
    skipped_log = log_of(events_of("BridgeEndpoint")["BatchItemSkipped"], rng)
    for contract in (lean, web3_contract):
        with pytest.raises(MismatchedABI):
            contract.events.LegStateChanged().process_log(skipped_log)
    short = log_of(changed, rng)
    short["topics"] = short["topics"][:-1]
    for contract in (lean, web3_contract):
        with pytest.raises(LogTopicError):
            contract.events.LegStateChanged().process_log(short)


def test_a_dynamic_indexed_input_is_refused_when_the_table_is_built() -> None:
    entry = {
        "type": "event",
        "name": "E",
        "anonymous": False,
        "inputs": [{"name": "x", "type": "bytes", "indexed": True}],
    }
    with pytest.raises(ValueError, match="indexed bytes is a hash in its topic"):
        AbiEvent.from_abi(entry)
