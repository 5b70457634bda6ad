"""Identifier formats and the phone spellings a CRM search must cover (pure functions, property tests)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from zaptrix.identity import is_bsuid, is_phone, is_username, phone_variants

digits = st.text(alphabet="0123456789", min_size=0, max_size=16)


@given(st.text(max_size=300))
def test_any_text_is_bounded_and_never_raises(text: str) -> None:
    variants = phone_variants(text)
    assert len(variants) <= 2 and all(v.isdigit() and len(v) <= 40 for v in variants)
    assert (
        is_bsuid(text) in (True, False)
        and is_phone(text) in (True, False)
        and is_username(text) in (True, False)
    )


@given(
    digits.map(lambda d: "55" + d) | digits.map(lambda d: "52" + d) | digits.map(lambda d: "54" + d) | digits
)
def test_the_variants_of_a_variant_are_the_same_set(number: str) -> None:
    variants = phone_variants(number)
    for v in variants:
        assert set(phone_variants(v)) == set(variants)
    assert not variants or variants[0] == number


@given(
    st.text(alphabet="0123456789", min_size=8, max_size=8).filter(lambda n: n[0] in "6789"),
    st.text(alphabet="123456789", min_size=2, max_size=2),
)
def test_brazil_with_and_without_the_ninth_digit_find_each_other(local: str, area: str) -> None:
    assert phone_variants(f"55{area}9{local}") == [f"55{area}9{local}", f"55{area}{local}"]
    assert phone_variants(f"55{area}{local}") == [f"55{area}{local}", f"55{area}9{local}"]


@given(st.text(alphabet="0123456789", min_size=10, max_size=10))
def test_mexico_521_and_argentina_549_find_each_other(national: str) -> None:
    assert set(phone_variants(f"521{national}")) == {f"521{national}", f"52{national}"}
    assert set(phone_variants(f"52{national}")) == {f"521{national}", f"52{national}"}
    assert set(phone_variants(f"549{national}")) == {f"549{national}", f"54{national}"}
    assert set(phone_variants(f"54{national}")) == {f"549{national}", f"54{national}"}


def test_other_numbers_have_one_spelling_and_a_plus_is_ignored() -> None:
    assert phone_variants("+49 170 1234567") == ["491701234567"]
    assert phone_variants("") == []


def test_formats() -> None:
    assert is_bsuid("US.13491208655302741918") and is_bsuid("US.ENT.11815799212886844830")
    assert not is_bsuid("491701234567") and not is_bsuid("US." + "1" * 129) and not is_bsuid("us.1")
    assert is_username("anna.s_1") and not is_username("a b") and not is_username("x" * 65)
