"""Tests for :mod:`p2pnet.ids`: key validation, the XOR metric and bucket arithmetic."""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2pnet import ids

keys = st.binary(min_size=ids.KEY_BYTES, max_size=ids.KEY_BYTES)
bucket_numbers = st.integers(min_value=0, max_value=ids.KEY_BITS - 1)
distances = st.integers(min_value=0, max_value=ids.MAX_KEY_INT)
wrong_length = st.binary(max_size=64).filter(lambda b: len(b) != ids.KEY_BYTES)
not_bytes = st.one_of(
    st.none(),
    st.integers(),
    st.text(),
    st.lists(st.integers(0, 255)),
    st.builds(bytearray, keys),
    st.builds(memoryview, keys),
)
not_str = st.one_of(st.none(), st.integers(), keys, st.builds(bytearray, keys))


class CheckKeyTests(SynchronousTestCase):
    @given(keys)
    def test_valid_key_returned(self, key: bytes) -> None:
        self.assertIs(ids.check_key(key), key)

    @given(not_bytes)
    def test_non_bytes_type_error(self, value: object) -> None:
        self.assertRaises(TypeError, ids.check_key, value)

    @given(wrong_length)
    def test_wrong_length_value_error(self, value: bytes) -> None:
        self.assertRaises(ValueError, ids.check_key, value)

    def test_error_names_what(self) -> None:
        e = self.assertRaises(TypeError, ids.check_key, "x", "node id")
        self.assertIn("node id", str(e))
        e = self.assertRaises(ValueError, ids.check_key, b"x", "node id")
        self.assertIn("node id", str(e))

    def test_constants(self) -> None:
        self.assertEqual(ids.KEY_BITS, 160)
        self.assertEqual(ids.KEY_BYTES, 20)
        self.assertEqual(ids.MAX_KEY_INT, 2**160 - 1)


class IntConversionTests(SynchronousTestCase):
    @given(keys)
    def test_key_int_round_trip(self, key: bytes) -> None:
        self.assertEqual(ids.int_to_key(ids.key_to_int(key)), key)

    @given(distances)
    def test_int_key_round_trip(self, value: int) -> None:
        self.assertEqual(ids.key_to_int(ids.int_to_key(value)), value)

    def test_int_out_of_range(self) -> None:
        self.assertRaises(ValueError, ids.int_to_key, -1)
        self.assertRaises(ValueError, ids.int_to_key, 2**160)

    def test_big_endian(self) -> None:
        self.assertEqual(ids.int_to_key(1), b"\x00" * 19 + b"\x01")
        self.assertEqual(ids.key_to_int(b"\x80" + b"\x00" * 19), 2**159)


class XORMetricTests(SynchronousTestCase):
    @given(keys)
    def test_self_distance_zero(self, a: bytes) -> None:
        self.assertEqual(ids.distance(a, a), 0)

    @given(keys, keys)
    def test_symmetry(self, a: bytes, b: bytes) -> None:
        self.assertEqual(ids.distance(a, b), ids.distance(b, a))

    @given(keys, keys)
    def test_zero_iff_equal(self, a: bytes, b: bytes) -> None:
        self.assertEqual(ids.distance(a, b) == 0, a == b)
        if a != b:
            self.assertGreater(ids.distance(a, b), 0)

    @given(keys, keys)
    def test_range(self, a: bytes, b: bytes) -> None:
        self.assertTrue(0 <= ids.distance(a, b) <= ids.MAX_KEY_INT)

    @given(keys, keys, keys)
    def test_triangle_inequality(self, a: bytes, b: bytes, c: bytes) -> None:
        self.assertLessEqual(ids.distance(a, c), ids.distance(a, b) + ids.distance(b, c))

    @given(keys, keys, keys)
    def test_xor_triangle(self, a: bytes, b: bytes, c: bytes) -> None:
        self.assertEqual(ids.distance(a, c), ids.distance(a, b) ^ ids.distance(b, c))

    @given(keys, distances)
    def test_unidirectional(self, a: bytes, d: int) -> None:
        # The only key at distance d from a is a XOR d ...
        b = ids.int_to_key(ids.key_to_int(a) ^ d)
        self.assertEqual(ids.distance(a, b), d)

    @given(keys, keys, keys)
    def test_unidirectional_unique(self, a: bytes, b: bytes, c: bytes) -> None:
        # ... and any two keys at the same distance from a are the same key.
        if ids.distance(a, b) == ids.distance(a, c):
            self.assertEqual(b, c)
        else:
            self.assertNotEqual(b, c)

    def test_known_values(self) -> None:
        zero = b"\x00" * 20
        ones = b"\xff" * 20
        self.assertEqual(ids.distance(zero, ones), ids.MAX_KEY_INT)
        self.assertEqual(ids.distance(zero, ids.int_to_key(5)), 5)


class BucketNumberTests(SynchronousTestCase):
    @given(keys, keys)
    def test_range(self, own: bytes, other: bytes) -> None:
        if own == other:
            self.assertRaises(ValueError, ids.bucket_number, own, other)
        else:
            self.assertIn(ids.bucket_number(own, other), range(160))

    @given(keys)
    def test_own_id_value_error(self, own: bytes) -> None:
        self.assertRaises(ValueError, ids.bucket_number, own, own)

    @given(keys, keys)
    def test_symmetric(self, a: bytes, b: bytes) -> None:
        if a != b:
            self.assertEqual(ids.bucket_number(a, b), ids.bucket_number(b, a))

    @given(keys, keys)
    def test_leading_zero_bits(self, own: bytes, other: bytes) -> None:
        if own == other:
            return
        n = ids.bucket_number(own, other)
        d = ids.distance(own, other)
        # the first set bit of the distance is bit (159 - n), counted from the least significant
        self.assertTrue(2 ** (159 - n) <= d < 2 ** (160 - n))

    def test_extremes(self) -> None:
        zero = b"\x00" * 20
        self.assertEqual(ids.bucket_number(zero, b"\x80" + b"\x00" * 19), 0)
        self.assertEqual(ids.bucket_number(zero, b"\xff" * 20), 0)
        self.assertEqual(ids.bucket_number(zero, ids.int_to_key(1)), 159)
        self.assertEqual(ids.bucket_number(zero, b"\x01" + b"\x00" * 19), 7)


class RandomKeyTests(SynchronousTestCase):
    def test_random_key_valid(self) -> None:
        key = ids.random_key()
        self.assertIs(ids.check_key(key), key)

    @given(keys)
    def test_random_key_uses_randbytes(self, raw: bytes) -> None:
        self.assertEqual(ids.random_key(lambda n: raw[:n]), raw)

    @given(keys, bucket_numbers, keys)
    def test_random_key_in_bucket(self, own: bytes, n: int, raw: bytes) -> None:
        key = ids.random_key_in_bucket(own, n, lambda size: raw[:size])
        ids.check_key(key)
        self.assertEqual(ids.bucket_number(own, key), n)

    @given(keys, bucket_numbers)
    def test_random_key_in_bucket_os_random(self, own: bytes, n: int) -> None:
        self.assertEqual(ids.bucket_number(own, ids.random_key_in_bucket(own, n)), n)

    @given(keys, bucket_numbers)
    def test_random_key_in_bucket_extreme_noise(self, own: bytes, n: int) -> None:
        for fill in (b"\x00", b"\xff"):
            key = ids.random_key_in_bucket(own, n, lambda size, f=fill: f * size)
            self.assertEqual(ids.bucket_number(own, key), n)

    def test_random_key_in_bucket_covers_range(self) -> None:
        # bucket n holds 2**(159 - n) keys; bucket 159 holds exactly one
        own = b"\x00" * 20
        self.assertEqual(ids.random_key_in_bucket(own, 159), ids.int_to_key(1))

    def test_random_key_in_bucket_bad_number(self) -> None:
        own = b"\x00" * 20
        self.assertRaises(ValueError, ids.random_key_in_bucket, own, -1)
        self.assertRaises(ValueError, ids.random_key_in_bucket, own, 160)


class TextFormTests(SynchronousTestCase):
    @given(keys)
    def test_hex_round_trip(self, key: bytes) -> None:
        text = ids.key_to_hex(key)
        self.assertEqual(text, key.hex())
        self.assertEqual(len(text), 40)
        self.assertEqual(ids.key_from_hex(text), key)
        self.assertEqual(ids.key_from_hex(text.upper()), key)

    @given(keys)
    def test_base64_round_trip(self, key: bytes) -> None:
        text = ids.key_to_base64(key)
        self.assertEqual(text, base64.b64encode(key).decode("ascii"))
        self.assertEqual(ids.key_from_base64(text), key)

    @given(not_bytes)
    def test_to_text_type_error(self, value: object) -> None:
        self.assertRaises(TypeError, ids.key_to_hex, value)
        self.assertRaises(TypeError, ids.key_to_base64, value)

    @given(wrong_length)
    def test_to_text_value_error(self, value: bytes) -> None:
        self.assertRaises(ValueError, ids.key_to_hex, value)
        self.assertRaises(ValueError, ids.key_to_base64, value)

    @given(not_str)
    def test_from_text_type_error(self, value: object) -> None:
        self.assertRaises(TypeError, ids.key_from_hex, value)
        self.assertRaises(TypeError, ids.key_from_base64, value)

    @given(wrong_length)
    def test_from_text_wrong_length(self, raw: bytes) -> None:
        self.assertRaises(ValueError, ids.key_from_hex, raw.hex())
        self.assertRaises(ValueError, ids.key_from_base64, base64.b64encode(raw).decode())

    def test_from_hex_bad_text(self) -> None:
        for text in ["zz" * 20, "0" * 39, "é" * 40, "\ud800" * 40, "0x" + "00" * 19, ""]:
            self.assertRaises(ValueError, ids.key_from_hex, text)

    def test_from_base64_bad_text(self) -> None:
        good = ids.key_to_base64(b"\x01" * 20)
        for text in [
            good[:-1],
            good + "=",
            good + "\n",
            "!" + good[1:],
            "é" * 28,
            "\ud800" * 28,
            "",
        ]:
            self.assertRaises(ValueError, ids.key_from_base64, text)

    @given(st.text(max_size=60))
    def test_from_text_only_value_error(self, text: str) -> None:
        for decode in (ids.key_from_hex, ids.key_from_base64):
            try:
                key = decode(text)
            except ValueError:
                continue
            self.assertEqual(len(key), ids.KEY_BYTES)


class KeyForTests(SynchronousTestCase):
    @given(st.binary(max_size=256))
    def test_sha1(self, data: bytes) -> None:
        key = ids.key_for(data)
        self.assertEqual(key, hashlib.sha1(data).digest())
        self.assertIs(ids.check_key(key), key)

    def test_known(self) -> None:
        self.assertEqual(
            ids.key_to_hex(ids.key_for(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        )
