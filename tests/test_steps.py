import pytest

from ticketlab.errors import TicketlabError
from ticketlab.steps import Step


@pytest.mark.parametrize(
    "text, per_epoch, expected", [("500it", 100, 500), ("3ep", 100, 300), (" 0it ", 7, 0), ("2ep", 7, 14), (12, 5, 12)]
)
def test_step_to_iterations(text, per_epoch, expected):
    assert Step.parse(text).iterations(per_epoch) == expected


@pytest.mark.parametrize("bad", ["500", "it", "3 epochs", "-1it", "1.5ep", "", "ep3"])
def test_malformed_step_is_a_user_error(bad):
    with pytest.raises(TicketlabError, match="malformed step"):
        Step.parse(bad)


def test_step_round_trips_as_text():
    assert str(Step.parse("2ep")) == "2ep" and Step.parse(str(Step.parse("40it"))) == Step(40, "it")
