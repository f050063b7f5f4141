"""ModelCheckpoint file names against Python's own str.format (issue 11, kind
1, input 6).

Keras formats a ModelCheckpoint filepath with filepath.format(epoch=epoch + 1,
**logs): epoch a Python int, every logs value a Python float. trainbus has
its own port of str.format (core/src/pyfmt.c); pyfmt_probe runs it, and each
case here is compared with what this python3 gives for the same pattern and
values: the same text, or an error in both (with Python's message where the
error is a ValueError of the mini-language).

The cases cover the whole format-spec mini-language (fill, align, sign, z, #,
0, width, grouping, precision, every type) for ints and floats, conversions,
bare fields, nested specs and the errors, over values chosen for their edges
(zero, -0.0, inf, nan, powers of two, ties, huge and tiny numbers). A fixed
seed makes the random part reproducible."""
import math
import os
import random
import struct
import subprocess
import sys
import unittest

PROBE = os.environ.get("PYFMT_PROBE", "")

VALUES = [0.0, -0.0, 1.0, -1.0, 0.5, 0.3385000079870224, 0.125, 0.375, 2.5, 1e16, 1e15,
          9.999999999999999e15, 123456789.0, 1234.5678, 1e-05, 0.0001, 0.00012345, 1e-300,
          5e-324, 1.7976931348623157e308, math.inf, -math.inf, math.nan, 2.0 ** 60, 2.0 ** -30,
          100.0, 10.0, 0.1, 0.2, 1 / 3, 2 / 3, 9.5, 0.05, 0.015, -0.0049, 1e22, 1e21, 123.0,
          float(struct.unpack("f", struct.pack("f", 0.01))[0]),
          float(struct.unpack("f", struct.pack("f", 1e-45))[0]), 4.35, 0.045, 1e100, 5e-5]
EPOCHS = [1, 0, 7, 12, 65, 1234567, 255, 1000]

FIXED_SPECS = ["", "d", "02d", "03", ".2f", "+.2f", "-.2f", " .2f", ".0f", "#.0f", ".3e", "E",
               "g", "G", ".3g", "#.3g", ".0g", "%", ".1%", "n", ".2n", ",", "_", ",.2f", "_.2f",
               "0=12,", "012,.1f", "010", "+010.3f", "x<10", "x>10", "x^10", "x=10", "*^9.2e",
               "<", ">", "^", "=", "10", "-10", "+10", " 10", "z.1f", "z", "+z.2f", "z010.1f",
               "b", "o", "x", "X", "#b", "#o", "#x", "#X", "_b", "_x", "#_X", "c", "10c", ">5c",
               ",d", "_d", "e", "f", "F", "%", ",%", ".100f", ".30g", ".17g", ".16", ".1", ".2",
               "#", "#10", "0", "00", "010,", "05_", "s", "abc", ".", ",,", "__", "_,", ",_",
               ".2,f", "1.2.3", "=+8", "é>7", "€^9.3f", "\t<5", "0<8", "0>8", "0^8", "{}", ".2d",
               "+c", "#c", ",b", ",x", ",n", "_n", ",c", "zd", "z#x", "+#.3g", "-#.0e", "q",
               "10.2fx", "99999999999999999999d", ".99999999999999999999f"]
TEMPLATES = ["m-{x:%s}.tbck", "{epoch:%s}", "ckpt-{epoch:%s}-{x:%s}", "{x!r:%s}", "{x!s:%s}",
             "{epoch!r:%s}", "{x!a:%s}"]
BARE = ["{x}", "{epoch}", "m-{epoch}-{x}.tbck", "{loss}", "{{x}}", "{{{x}}}", "}}{epoch}{{",
        "{x!r}", "{x!s}", "{x!a}", "{epoch!r}", "{x!z}", "{x!}", "{x!rr}", "{x!r:}", "{x:}",
        "{}", "{0}", "{1}", "{x", "x}", "{", "}", "{x.real}", "{x.imag}", "{epoch.real}",
        "{epoch.imag}", "{epoch.numerator}", "{epoch.denominator}", "{x.numerator}", "{x.foo}",
        "{x[0]}", "{x.}", "{x..real}", "{x.real[0]}", "{x[0}", "{missing}", "{val_loss:.2f}",
        "{x:{epoch}}", "{x:.{epoch}f}", "{x:{epoch}.{epoch}}", "{x:{x}}", "{x:{{}}}",
        "{x:{epoch:{epoch}}}", "{x:{missing}}", "{x:>{epoch}}", "{x{}}", "{x:{}}", "{0x}",
        "{ x}", "{x }", "{é}", "{x!é}", "{x!\u20ac:>5}", "{x[}", "{x]}", "{x:{epoch}}{x!r:^{epoch}}",
        "no fields", "", "{{", "}}", "{epoch:c}", "{x:.{1}f}"]


def python_format(pattern, x, epoch):
    try:
        text = pattern.format(epoch=epoch, x=x, loss=x)
        # Keras's save then fails in open(): "embedded null byte", or "File
        # name too long" past trainbus's 1023-byte limit on paths.
        if "\0" in text:
            return ("ERR", "ValueError", "embedded null byte")
        if len(text.encode("utf-8")) > 1023:
            return ("ERR", "OSError", "File name too long")
        return ("OK", text)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError, OverflowError,
            MemoryError) as e:
        return ("ERR", type(e).__name__, str(e))


def random_spec(rng):
    s = ""
    if rng.random() < 0.3:
        s += rng.choice(["x", "*", "0", " ", "é", "<", "{{"]) if rng.random() < 0.5 else ""
        s += rng.choice("<>=^")
    if rng.random() < 0.3:
        s += rng.choice("+- ")
    if rng.random() < 0.1:
        s += "z"
    if rng.random() < 0.15:
        s += "#"
    if rng.random() < 0.25:
        s += "0"
    if rng.random() < 0.4:
        s += str(rng.choice([1, 2, 5, 8, 12, 20]))
    if rng.random() < 0.2:
        s += rng.choice(",_")
    if rng.random() < 0.4:
        s += "." + str(rng.choice([0, 1, 2, 3, 6, 10, 17, 25]))
    if rng.random() < 0.7:
        s += rng.choice("bcdoxXneEfFgG%s")
    return s.replace("{{", "")


def probe(cases):
    """Runs pyfmt_probe over [(pattern, x, epoch)]; returns its answers."""
    lines = []
    for pattern, x, epoch in cases:
        h = pattern.encode("utf-8").hex() or "-"
        lines.append("%s %s %d\n" % (h, float.hex(x) if math.isfinite(x) else repr(x), epoch))
    out = subprocess.run([PROBE], input="".join(lines), capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    res = []
    for l in out:
        kind, _, rest = l.partition(" ")
        if kind == "OK":
            res.append(("OK", bytes.fromhex(rest).decode("utf-8")))
        else:
            res.append((kind, rest))
    return res


class PyFormat(unittest.TestCase):
    def setUp(self):
        if not PROBE or not os.access(PROBE, os.X_OK):
            self.fail("PYFMT_PROBE=%r is not an executable" % PROBE)

    def compare(self, cases):
        got = probe(cases)
        self.assertEqual(len(got), len(cases))
        bad = []
        for (pattern, x, epoch), g in zip(cases, got):
            want = python_format(pattern, x, epoch)
            if want[0] == "OK":
                if g != want:
                    bad.append("%r x=%r epoch=%d: python %r, trainbus %r" %
                               (pattern, x, epoch, want[1], g))
            elif g[0] != "ERR":
                bad.append("%r x=%r epoch=%d: python raises %s(%s), trainbus gives %r" %
                           (pattern, x, epoch, want[1], want[2], g))
            elif want[1] == "ValueError" and want[2] not in g[1]:
                bad.append("%r x=%r epoch=%d: python's message %r, trainbus %r" %
                           (pattern, x, epoch, want[2], g[1]))
        if bad:
            self.fail("\n".join(bad[:40]) + "\n(%d of %d differ)" % (len(bad), len(cases)))
        return got

    def test_issue_example(self):
        """m-{val_loss:+.2f}.tbck with val_loss 0.3385 gives m-+0.34.tbck."""
        got = self.compare([("m-{x:+.2f}.tbck", 0.3385, 1)])
        self.assertEqual(got[0], ("OK", "m-+0.34.tbck"))

    def test_fixed_specs(self):
        cases = []
        for spec in FIXED_SPECS:
            for t in TEMPLATES:
                pattern = t % ((spec,) * t.count("%s"))
                for x in VALUES:
                    cases.append((pattern, x, EPOCHS[len(cases) % len(EPOCHS)]))
        self.compare(cases)

    def test_bare_fields_and_errors(self):
        self.compare([(p, x, e) for p in BARE for x in VALUES for e in EPOCHS[:3]])

    def test_random_specs(self):
        rng = random.Random(11)
        cases = []
        for i in range(20000):
            spec = random_spec(rng)
            x = rng.choice(VALUES) if i % 3 else rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-12, 12)
            cases.append((rng.choice(["{x:%s}", "{epoch:%s}", "{x!r:%s}"]) % spec, x,
                          rng.choice(EPOCHS)))
        self.compare(cases)

    def test_repr_of_floats(self):
        """Bare {x} is str(x), Python's repr: shortest digits, 1e16 switch, etc."""
        rng = random.Random(5)
        xs = list(VALUES)
        for _ in range(20000):
            b = rng.getrandbits(64)
            x = struct.unpack("<d", struct.pack("<Q", b))[0]
            xs.append(x)
            xs.append(float(struct.unpack("f", struct.pack("f", rng.uniform(-10, 10)))[0]))
        for k in range(-1074, 1024):
            xs.append(2.0 ** k)
        self.compare([("{x}", x, 1) for x in xs])


if __name__ == "__main__":
    unittest.main()
