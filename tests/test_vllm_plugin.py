"""fvsteer's vLLM plugin without vLLM: the steering state's per-token rows, the in-graph add of the steered layer,
batch slot moves, the resident bank and the wire format of a request's steering. (With a real vLLM server:
tests_vllm/, make test-vllm.)"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from fvsteer_vllm.bank import BankError, BankFolder, ResidentBank, vector_key
from fvsteer_vllm.layers import SteeredLayer, check_parallelism, wrap_layers
from fvsteer_vllm.spec import Entry, SpecError, SteeringSpec
from fvsteer_vllm.state import SteeringState
from safetensors.torch import save_file
from torch import nn

from app.engine.vllm_backend import cache_salt

D = 4
N_LAYERS = 3


def write(folder: Path, name: str, values: list[float]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    vector = torch.tensor(values)
    save_file({"vector": vector}, str(folder / f"{name}.safetensors"))
    return vector_key(name, vector)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "bank"


def make_state(folder: Path, slots: int = 4, capacity: int = 8) -> SteeringState:
    return SteeringState(folder, capacity, N_LAYERS, D, slots, 64, torch.device("cpu"))


def spec(*entries: tuple[str, float, int], positions: str = "fv") -> SteeringSpec:
    return SteeringSpec(tuple(Entry(*entry) for entry in entries), positions)  # type: ignore[arg-type]


def test_tokens_point_at_their_request_only_where_the_fv_policy_steers(folder: Path) -> None:
    up = write(folder, "up", [1.0, 0, 0, 0])
    state = make_state(folder)
    state.add(0, spec((up, 2.0, 1)), prompt_len=5)  # a chunked prefill: positions 0..3 now, 4 (its last) later
    state.add(1, None, prompt_len=3)  # unsteered, decoding
    state.add(2, spec((up, 1.0, 2), positions="all"), prompt_len=3)  # prefill of 3 tokens, every one steered
    state.add(3, spec((up, 1.0, 1)), prompt_len=2)  # decoding its first generated token
    positions = torch.tensor([0, 1, 2, 3, 10, 0, 1, 2, 2])
    qsl = torch.tensor([0, 4, 5, 8, 9])
    state.prepare(qsl, positions)
    zero = state.zero_row
    assert state.token_rows[:9].tolist() == [zero, zero, zero, zero, zero, 2, 2, 2, 3]
    state.prepare(torch.tensor([0, 1, 2, 3, 4]), torch.tensor([4, 11, 3, 3]))  # slot 0's last prompt token
    assert state.token_rows[:4].tolist() == [0, zero, 2, 3]
    assert state.weights[1, 0].tolist()[: 1] == [2.0] and state.weights[2, 2, 0] == 1.0
    assert not state.weights[:, zero].any()


def test_padded_tokens_and_runs_without_requests_get_nothing(folder: Path) -> None:
    up = write(folder, "up", [1.0, 0, 0, 0])
    state = make_state(folder)
    state.add(0, spec((up, 1.0, 0), positions="all"), prompt_len=2)
    state.prepare(torch.tensor([0, 2, 2, 2, 2]), torch.tensor([0, 1, 0, 0]))  # 2 real tokens, 2 padding
    assert state.token_rows[:4].tolist() == [0, 0, state.zero_row, state.zero_row]
    state.prepare(None, torch.tensor([0, 1, 2]))  # a profiling run
    assert state.token_rows[:3].tolist() == [state.zero_row] * 3


def test_moves_and_swaps_carry_the_weights(folder: Path) -> None:
    up, side = write(folder, "up", [1.0, 0, 0, 0]), write(folder, "side", [0, 1.0, 0, 0])
    state = make_state(folder)
    state.add(0, spec((up, 1.0, 0)), prompt_len=4)
    state.add(1, spec((side, 3.0, 2)), prompt_len=7)
    state.move(0, 1, swap=True)
    assert state.weights[2, 0].sum() == 3.0 and state.weights[0, 1].sum() == 1.0
    assert state.first_steered[:2].tolist() == [6, 3]
    state.move(1, 3, swap=False)  # condensing: slot 1 → 3, slot 1 empty
    assert state.weights[0, 3].sum() == 1.0 and not state.weights[:, 1].any()
    state.remove(3)
    state.remove(0)
    assert not state.weights.any() and not state.steering


def test_the_steered_layer_adds_exactly_w_t_times_b(folder: Path) -> None:
    up, side = write(folder, "up", [1.0, 2.0, 0, 0]), write(folder, "side", [0, 0, 1.0, 0])
    state = make_state(folder)

    class Block(nn.Module):
        def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
            return hidden * 1.5, residual

    layer = SteeredLayer(Block(), 1, state)
    state.add(0, spec((up, 2.0, 1), (side, -0.5, 1)), prompt_len=2)
    state.add(1, None, prompt_len=2)
    hidden = torch.randn(4, D)
    state.prepare(torch.tensor([0, 2, 4]), torch.tensor([0, 1, 0, 1]))
    out, residual = layer(torch.zeros(4), hidden, hidden)
    assert torch.equal(residual, hidden)
    assert torch.equal(out[[0, 2, 3]], hidden[[0, 2, 3]] * 1.5)  # nothing added, bit for bit
    assert torch.allclose(out[1] - hidden[1] * 1.5, torch.tensor([2.0, 4.0, -0.5, 0.0]))


def test_wrapping_finds_the_layers_and_keeps_buffers_shared(folder: Path) -> None:
    state = make_state(folder)
    model = nn.Module()
    model.model = nn.Module()
    model.model.layers = nn.ModuleList([nn.Identity() for _ in range(N_LAYERS)])
    assert wrap_layers(model, state) == N_LAYERS
    assert wrap_layers(model, state) == 0  # idempotent
    wrapped = model.model.layers
    assert all(layer.bank.data_ptr() == state.bank.table.data_ptr() for layer in wrapped)


class PPMissingLayer(nn.Identity):
    """What vLLM's pipeline parallelism leaves in a rank's layer list for the layers another rank holds (matched by
    name, as the plugin does: vLLM is not installed here)."""


class Scale(nn.Module):
    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden * 1.5, residual


def pipeline_rank(folder: Path, held: set[int]) -> tuple[nn.Module, SteeringState]:
    state = make_state(folder)
    model = nn.Module()
    model.model = nn.Module()
    model.model.layers = nn.ModuleList([Scale() if index in held else PPMissingLayer() for index in range(N_LAYERS)])
    return model, state


def run_rank(model: nn.Module, hidden: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of the layers this rank holds, in order (a placeholder hands its input on)."""
    outputs = []
    for layer in model.model.layers:
        if type(layer).__name__ == "PPMissingLayer":
            continue
        hidden, _ = layer(torch.zeros(len(hidden)), hidden, hidden)
        outputs.append(hidden)
    return outputs


def test_a_pipeline_rank_adds_only_at_the_layers_it_holds(folder: Path) -> None:
    """A model split over two stages (layers 0-1 on the first, 2 on the second): the rank without a request's target
    layer adds nothing and does not fail; the rank with it adds exactly W_t @ B."""
    up = write(folder, "up", [1.0, 2.0, 0, 0])
    first, first_state = pipeline_rank(folder, {0, 1})
    second, second_state = pipeline_rank(folder, {2})
    assert (wrap_layers(first, first_state), wrap_layers(second, second_state)) == (2, 1)
    hidden = torch.randn(2, D)
    for state in (first_state, second_state):
        state.add(0, spec((up, 2.0, 2)), prompt_len=2)
        state.prepare(torch.tensor([0, 2]), torch.tensor([0, 1]))
    plain = hidden
    for out in run_rank(first, hidden):
        plain = plain * 1.5
        assert torch.equal(out, plain)  # nothing added, bit for bit
    (out,) = run_rank(second, hidden)
    assert torch.equal(out[0], hidden[0] * 1.5)  # the prompt's first token: not steered under the fv policy
    assert torch.allclose(out[1] - hidden[1] * 1.5, torch.tensor([2.0, 4.0, 0.0, 0.0]))


def test_pipeline_parallelism_is_refused_until_a_run_checks_it() -> None:
    check_parallelism(1)
    with pytest.raises(ValueError, match=r"pipeline-parallel-size 2 is not supported.*tensor-parallel-size"):
        check_parallelism(2)


def test_the_bank_keeps_rows_and_its_address(folder: Path) -> None:
    keys = [write(folder, f"v{i}", [float(i)] * D) for i in range(3)]
    bank = ResidentBank(folder, capacity=3, d_model=D, device=torch.device("cpu"))
    address = bank.table.data_ptr()
    rows = [bank.acquire(key) for key in keys]
    assert sorted(rows) == [0, 1, 2] and bank.table[rows[2]].tolist() == [2.0] * D
    for key in keys:
        bank.release(key)
    (folder / "v0.safetensors").unlink()
    assert bank.acquire(keys[0]) == rows[0]  # gone from disk, kept while nothing needs its row
    bank.release(keys[0])
    newer = write(folder, "v3", [9.0] * D)  # the bank is full: v0's row, held by no request, is reused
    assert bank.acquire(newer) == rows[0] and bank.table[rows[0]].tolist() == [9.0] * D
    with pytest.raises(BankError, match="no vector"):
        bank.acquire(keys[0])
    assert bank.table.data_ptr() == address


def test_a_row_held_by_a_request_is_never_reused(folder: Path) -> None:
    held, other = write(folder, "held", [1.0] * D), write(folder, "other", [2.0] * D)
    bank = ResidentBank(folder, capacity=2, d_model=D, device=torch.device("cpu"))
    row = bank.acquire(held)
    (folder / "held.safetensors").unlink()
    bank.refresh()
    newer = write(folder, "newer", [3.0] * D)
    with pytest.raises(BankError, match="rows holds a vector in use"):  # other is in the folder, held is in use
        bank.acquire(newer)
    assert bank.table[row].tolist() == [1.0] * D
    bank.release(held)
    assert bank.acquire(newer) == row and bank.acquire(other) != row


def test_a_vector_deleted_after_admission_is_served_from_its_pin(folder: Path) -> None:
    key = write(folder, "late", [5.0] * D)
    admission = BankFolder(folder, D)
    admission.pin(key, admission.holding()[key])
    (folder / "late.safetensors").unlink()
    bank = ResidentBank(folder, capacity=2, d_model=D, device=torch.device("cpu"))
    assert bank.table[bank.acquire(key)].tolist() == [5.0] * D
    replaced = write(folder, "swapped", [1.0] * D)
    listed = admission.holding(force=True)[replaced]
    write(folder, "swapped", [7.0] * D)  # replaced between the listing and the pin: the pin checks the digest
    with pytest.raises(FileNotFoundError, match="no longer holds"):
        admission.pin(replaced, listed)
    assert not list((folder / ".pinned").glob("swapped*"))


def test_steering_the_worker_cannot_apply_fails_its_slot_alone(folder: Path) -> None:
    good = write(folder, "good", [1.0] * D)
    state = make_state(folder)
    state.add(0, spec((good, 1.0, 1)), 3)
    broken = SteeringSpec((Entry(good, 1.0, 1), Entry("gone@0000000000000000", 1.0, 1)), "fv", "req-1")
    state.add(1, broken, 3)
    state.add(2, SteeringSpec((Entry(good, 1.0, 7),), "fv", "req-2"), 3)  # a layer the model does not have
    assert state.failed == {1, 2}
    assert "no vector 'gone@0000000000000000'" in (folder / ".failed" / "req-1").read_text()
    assert "layer 7 is outside" in (folder / ".failed" / "req-2").read_text()
    assert state.weights[:, 1:3].abs().sum() == 0  # nothing half-applied
    assert state.bank._users == {good: 1}  # the failed slot gave back the row it had taken
    state.move(1, 3, swap=False)
    assert state.failed == {2, 3}
    state.remove(3)
    state.remove(2)
    assert state.failed == set() and state.weights[1, 0].abs().sum() > 0


def test_a_vector_made_again_under_its_name_is_another_key(folder: Path) -> None:
    old = write(folder, "x", [1.0, 0, 0, 0])
    seen = BankFolder(folder, D)
    assert old in seen.holding()
    time.sleep(0.01)
    new = write(folder, "x", [0, 1.0, 0, 0])
    os.utime(folder / "x.safetensors", (time.time() + 5, time.time() + 5))  # a distinct mtime on coarse clocks
    assert new != old and set(seen.holding(force=True)) == {new}


def test_steering_spec_round_trips_and_refuses_bad_input() -> None:
    made = spec(("a@00", 0.5, 3), ("b@11", -1.0, 9), positions="all")
    assert SteeringSpec.of({"fvsteer": made.dumps()}) == made
    named = SteeringSpec(made.entries, "all", "abc_1-2")
    assert SteeringSpec.of({"fvsteer": named.dumps()}) == named and named.steering() == made
    assert SteeringSpec.of(None) is None and SteeringSpec.of({"other": 1}) is None
    for bad in ("{", '{"v": []}', '{"v": [["a@0", "x", 1]]}', '{"v": [["a", 1, 1]]}',
                '{"v": [["a@0", 1, 1]], "positions": "some"}', '{"v": [["a@0", NaN, 1]]}',
                '{"v": [["a@0", 1, 1]], "id": "../x"}', '{"v": [["a@0", 1, 1]], "id": 5}'):
        with pytest.raises(SpecError):
            SteeringSpec.of({"fvsteer": bad})


def test_the_cache_salt_separates_every_steering_that_changes_kv() -> None:
    one, other = spec(("a@00", 1.0, 3)), spec(("a@00", 0.5, 3))
    assert cache_salt(one, 10) == cache_salt(one, 10)
    assert cache_salt(SteeringSpec(one.entries, one.positions, "request-7"), 10) == cache_salt(one, 10)
    assert len({cache_salt(one, 10), cache_salt(other, 10), cache_salt(one, 11),
                cache_salt(spec(("a@00", 1.0, 3), positions="all"), 10)}) == 4
    every = spec(("a@00", 1.0, 3), positions="all")
    assert cache_salt(every, 10) == cache_salt(every, 11)  # every position steered: the prompt length is moot
    assert all(c not in cache_salt(one, 10) for c in "@/\\\0") and len(cache_salt(one, 10)) <= 128
