"""agents.chain.records: records rebuilt from events match the hash the Ledger stores."""

from dataclasses import replace

import pytest
from eth_utils import keccak

from agents.chain.build import contract_type
from agents.chain.records import Record, RecordNotFound, load_record


@pytest.fixture(autouse=True)
def _network(network):
    return network


@pytest.fixture
def w3_ledger(chain, ledger):
    w3 = chain.provider.web3
    return w3.eth.contract(address=ledger.address, abi=contract_type("Ledger")["abi"])


def test_load_record__started_quorum_finished__matches_chain(ledger, client, start, finish_record, w3_ledger):
    s, executor, record = start(client, max_tokens=32, quorum=1)
    assert record.quorum == 1
    assert load_record(w3_ledger, record.inference_id) == record
    done = finish_record(record, executor, 5)
    loaded = load_record(w3_ledger, record.inference_id)
    assert loaded == done and loaded.finish_block > 0 and loaded.p_bps == 10_000
    assert bytes(ledger.stateOf(record.inference_id).record_hash) == loaded.record_hash()


def test_load_record__unknown__not_found(w3_ledger):
    with pytest.raises(RecordNotFound, match="no Started event for 0x"):
        load_record(w3_ledger, keccak(b"unknown"))


def test_load_record__scan_starts_after_start__not_found(ledger, client, finish, w3_ledger, chain):
    s, executor, record = finish(client)
    chain.mine(1)
    with pytest.raises(RecordNotFound, match="no Started event"):
        load_record(w3_ledger, record.inference_id, from_block=record.finish_block)


def test_load_record__events_disagree_with_chain__mismatch(ledger, client, start, w3_ledger):
    """A lossy event source (here: the Finished log withheld) is caught by the hash check."""
    s, executor, record = start(client)
    ledger.finish((record.as_tuple(), keccak(b"a"), keccak(b"d"), 3), sender=executor)

    class Withheld:
        w3 = w3_ledger.w3
        functions = w3_ledger.functions

        class events:
            Started = w3_ledger.events.Started

            class Finished:
                def get_logs(self, **_):
                    return []

    with pytest.raises(RecordNotFound, match="do not rebuild the record"):
        load_record(Withheld, record.inference_id)


def test_record_hash__low_16_bits_clear_and_field_sensitive():
    r = Record(b"\x01" * 32, "0x" + "11" * 20, "0x" + "22" * 20, b"\x02" * 32, 3, 4, 5)
    assert r.record_hash()[-2:] == b"\x00\x00"
    assert r.record_hash() != replace(r, deadline=6).record_hash()
