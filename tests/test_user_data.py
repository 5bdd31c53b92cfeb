"""The Python API's reading of the caller's data: dtypes, sources (arrays, dicts, DataLoaders), labels."""

import pytest
import torch
from torch import nn

from ticketlab.data import Dataset, Split, batches
from ticketlab.errors import TicketlabError
from ticketlab.training.objectives import Objective, evaluate
from ticketlab.user_data import check_labels, check_like, tensors_from

X = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
Y = torch.arange(30) % 3


@pytest.mark.parametrize(
    "x, dtype",
    [
        (X.double(), torch.float32),
        (X.half(), torch.float32),
        (torch.randint(0, 256, (30, 4), dtype=torch.uint8), torch.int64),  # not rescaled: ids or pixel values
        (torch.randint(0, 50, (30, 4), dtype=torch.int32), torch.int64),
        (torch.rand(30, 4) > 0.5, torch.float32),
    ],
)
def test_inputs_keep_their_kind_floating_to_float32_integer_to_int64(x, dtype):
    split = tensors_from((x, Y), "train")
    assert split.x.dtype == dtype
    assert torch.equal(split.x, x.to(dtype))  # the values as given, integers not scaled


def test_complex_inputs_are_refused_in_one_line():
    with pytest.raises(TicketlabError, match=r"^train: inputs of dtype torch.complex64 cannot be used; .*x.real"):
        tensors_from((torch.randn(30, 4, dtype=torch.cfloat), Y), "train")


def test_integer_inputs_flow_through_batches_and_evaluation_unchanged():
    ids = torch.randint(0, 50, (40, 6))
    split = tensors_from((ids, torch.randint(0, 3, (40,))), "train")
    (_, x, _), *_ = batches(split, 8, seed=0, start=0, stop=1)
    assert x.dtype == torch.int64 and bool((x.unsqueeze(1) == ids.unsqueeze(0)).all(-1).any(1).all())
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(48, 3))
    loss, acc = evaluate(model, split)
    assert loss > 0 and 0 <= acc <= 1


def test_numpy_arrays_read_as_the_same_tensors():
    split = tensors_from((X.numpy(), Y.numpy()), "train")
    assert torch.equal(split.x, X) and torch.equal(split.y, Y)


class Dicts(torch.utils.data.Dataset):
    def __init__(self, keys):
        self.keys = keys

    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        return dict(zip(self.keys, (X[i], Y[i])))


@pytest.mark.parametrize("keys", [("input", "label"), ("input_ids", "labels"), ("features", "target"), ("x", "y")])
def test_dict_batches_by_their_documented_keys(keys):
    split = tensors_from(torch.utils.data.DataLoader(Dicts(keys), batch_size=7), "train")
    assert torch.equal(split.x, X) and torch.equal(split.y, Y)


@pytest.mark.parametrize(
    "keys, message",
    [
        (
            ("pixels", "label"),
            r"train: a dict batch holds its inputs under none of the keys x, input, .*; it has keys "
            r"'pixels', 'label'",
        ),
        (("x", "cls"), "labels under none of the keys y, label, labels, target, targets; it has keys 'x', 'cls'"),
    ],
)
def test_dict_batches_without_a_known_key_name_the_keys_found(keys, message):
    with pytest.raises(TicketlabError, match=message):
        tensors_from(torch.utils.data.DataLoader(Dicts(keys), batch_size=7), "train")


def test_a_dict_with_two_input_keys_is_ambiguous():
    with pytest.raises(TicketlabError, match=r"inputs under several of \(x, input\)"):
        tensors_from({"x": X, "input": X, "y": Y}, "train")


def test_list_batches_and_single_examples_are_joined():
    lists = [[X[i : i + 10], Y[i : i + 10]] for i in range(0, 30, 10)]
    assert torch.equal(tensors_from(lists).x, X)
    examples = torch.utils.data.TensorDataset(X, Y)  # iterated as is: one (x_i, y_i) at a time, stacked
    split = tensors_from(examples)
    assert torch.equal(split.x, X) and torch.equal(split.y, Y)
    with pytest.raises(TicketlabError, match="each batch must be .x, y. or a dict of x and y, not a tuple of 3"):
        tensors_from([(X, Y, Y)])


@pytest.mark.parametrize(
    "y, message",
    [
        (
            Y.float() / 10,
            r"train: y must hold class ids; it has fractional values \(e.g. 0.1\), which would be truncated",
        ),
        (nn.functional.one_hot(Y), r"train: y has shape \(30, 3\) \(one-hot or scores\?\); .*y.argmax\(1\)"),
        (Y[:, None], r"train: y has shape \(30, 1\); pass one class id per example, y.view\(-1\)"),
        (Y > 0, "train: y must hold integer class ids, not torch.bool"),
    ],
)
def test_labels_that_are_not_class_ids_are_refused_with_the_fix(y, message):
    with pytest.raises(TicketlabError, match=message):
        tensors_from((X, y), "train")


def test_whole_float_labels_are_class_ids():
    assert torch.equal(tensors_from((X, Y.double()), "train").y, Y)


@pytest.mark.parametrize(
    "y, message",
    [
        (Y - 1, r"^val: labels must be class ids in \[0, 3\) \(the model has 3 outputs\); y has -1. Remove"),
        (
            Y + 1,
            r"^val: labels must be class ids in \[0, 3\) \(the model has 3 outputs\); y has 3. Give the model at "
            "least 4 outputs",
        ),
    ],
)
def test_labels_outside_the_model_width_name_the_argument_and_the_width(y, message):
    with pytest.raises(TicketlabError, match=message):
        check_labels(Split(X, y), "val", 3)
    check_labels(Split(X, Y), "val", 3)  # in range: nothing to say


def test_test_data_must_match_train_in_shape_and_kind():
    train = tensors_from((X, Y), "train")
    with pytest.raises(TicketlabError, match=r"^test: examples have shape \(5,\) but the training examples have "):
        check_like(tensors_from((torch.randn(9, 5), Y[:9])), train, "test")
    with pytest.raises(TicketlabError, match="^val: inputs are integer but the training inputs are floating-point"):
        check_like(tensors_from((torch.randint(0, 9, (9, 4)), Y[:9])), train, "val")


class Scores(nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return {"scores": self.linear(x), "hidden": x}


def test_a_dataset_carries_its_objective_to_evaluation():
    split = tensors_from((X, Y))
    data = Dataset("d", split, split, None, 3, objective=Objective(output=lambda out: out["scores"]))
    linear = nn.Linear(4, 3)
    assert evaluate(Scores(linear), split, data.objective) == evaluate(linear, split)
    with pytest.raises(TicketlabError, match="cannot find the class scores .* pass output_fn"):
        evaluate(Scores(linear), split)
