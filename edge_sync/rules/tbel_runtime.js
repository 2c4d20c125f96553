// TBEL's Java methods, foreach and TbUtils helpers for a TBEL script run as JavaScript
// (edge_sync/rules/tbel_runtime.py says how it is used). Whole-line // comments only: the file is
// joined into one line. Sources followed: the tbel library's org.mvel2.execution.ExecutionArrayList,
// ExecutionHashMap and ExecutionEntry, java.util.ArrayList / LinkedHashMap / java.lang.String,
// MVEL's ForEachNode, ThingsBoard's org.thingsboard.script.api.tbel.TbUtils and
// org.thingsboard.common.util.NumberUtils.
// __tbelBytes: the lists whose items are Java Bytes (List<Byte> of hexToBytes, stringToBytes, ...,
// and their copies); a list literal's numbers are Integers
var __tbelBytes = new WeakSet(), __tbelS = {}, __tbelG = {}, __tbelIter, __TbelEntry, __tbelRegex, __TbelDate, __tbelNewDate, __tbelDateStatics;
// a region time zone's rules: their loader, and what one run of the script used and lacked
// (TbDate below; the runners set it to null at each run's start)
var __tbelZoneLoad, __tbelZoneRun = null;
(function () {
  "use strict";
  var own = Object.prototype.hasOwnProperty, M = {};
// ExecutionEntry: public key and value, getKey/getValue/setValue (a copy: setValue leaves the map as it is)
  function Entry(key, value) { this.key = key; this.value = value; }
// Jackson writes a Map.Entry as an object of its one key: {"a": 1}
  Object.defineProperty(Entry.prototype, "toJSON", {value: function () {
    var o = {}; o[this.key] = this.value; return o; }});
  __TbelEntry = Entry;
// java.util's equals: maps and lists by content (AbstractMap.equals, AbstractList.equals)
  function same(a, b) {
    if (a === undefined) { a = null; }
    if (b === undefined) { b = null; }
    if (a === b) { return true; }
    if (a === null || b === null || typeof a !== "object" || typeof b !== "object") { return false; }
    var list = Array.isArray(a), i;
    if (list !== Array.isArray(b)) { return false; }
    if (list) {
      if (a.length !== b.length) { return false; }
      for (i = 0; i < a.length; i++) { if (!same(a[i], b[i])) { return false; } }
      return true;
    }
    var keys = Object.keys(a);
    if (keys.length !== Object.keys(b).length) { return false; }
    for (i = 0; i < keys.length; i++) {
      if (!own.call(b, keys[i]) || !same(a[keys[i]], b[keys[i]])) { return false; }
    }
    return true;
  }
  function kind(x) {
    if (Array.isArray(x)) { return "list"; }
    if (typeof x === "string") { return "text"; }
    if (x instanceof Entry) { return "entry"; }
    if (x !== null && typeof x === "object") { return "map"; }
    return x === null ? "null" : typeof x;
  }
// Java's toString: String.valueOf, AbstractCollection / AbstractMap.toString (a whole number
// is printed without ".0": JSON does not say whether it was a double)
  function text(v) {
    if (v === null || v === undefined) { return "null"; }
    if (typeof v === "number") {
      if (v % 1 === 0 && Math.abs(v) < 1e21) { return String(v); }
      return javaDouble(v);
    }
    if (Array.isArray(v)) { return "[" + v.map(text).join(", ") + "]"; }
    if (v instanceof Entry) { return text(v.key) + "=" + text(v.value); }
    if (v instanceof TbDate) { throw new TypeError("the text of a Date (TbDate.toString: localized) is not made here: use toISOString() (see docs/rules-scripts.md)"); }
    if (typeof v === "object") {
      return "{" + Object.keys(v).filter(function (k) { return v[k] !== null; }).map(function (k) {
        return k + "=" + text(v[k]); }).join(", ") + "}";
    }
    return String(v);
  }
  function javaDouble(v) {
    if (v !== v) { return "NaN"; }
    if (v === Infinity) { return "Infinity"; }
    if (v === -Infinity) { return "-Infinity"; }
    if (v === 0) { return 1 / v < 0 ? "-0.0" : "0.0"; }
    var sign = v < 0 ? "-" : "", e = Math.abs(v).toExponential(), at = e.indexOf("e");
    var digits = e.slice(0, at).replace(".", "").replace(/0+$/, "") || "0", exp = Number(e.slice(at + 1));
    if (exp >= -3 && exp < 7) {
      if (exp >= 0) {
        var whole = digits.slice(0, exp + 1);
        while (whole.length < exp + 1) { whole += "0"; }
        return sign + whole + "." + (digits.slice(exp + 1) || "0");
      }
      return sign + "0." + "0".repeat(-exp - 1) + digits;
    }
    return sign + digits[0] + "." + (digits.slice(1) || "0") + "E" + exp;
  }
  function whole(name, i) {
    if (typeof i !== "number" || i % 1 !== 0) {
      throw new TypeError(name + "(" + text(i) + "): the index is not a whole number");
    }
    return i;
  }
// Objects.checkIndex (ArrayList.get/set/remove): IndexOutOfBoundsException
  function checkIndex(name, i, n) {
    whole(name, i);
    if (i < 0 || i >= n) { throw new RangeError("Index " + i + " out of bounds for length " + n); }
    return i;
  }
// ArrayList.rangeCheckForAdd (add(int, E), addAll(int, Collection))
  function checkAddIndex(name, i, n) {
    whole(name, i);
    if (i < 0 || i > n) { throw new RangeError("Index: " + i + ", Size: " + n); }
    return i;
  }
  function aList(name, c) {
    if (!Array.isArray(c)) { throw new TypeError(name + "(): " + text(c) + " is not a list"); }
    return c;
  }
  function aMap(name, m) {
    if (kind(m) !== "map") { throw new TypeError(name + "(): " + text(m) + " is not a map"); }
    return m;
  }
  function aText(name, s) {
    if (typeof s !== "string") { throw new TypeError(name + "(): " + text(s) + " is not text"); }
    return s;
  }
// map keys are text, as JSON's are
  function key(k) { return String(k); }
  var KINDS = {list: "a list", map: "a map", text: "text", entry: "a map entry", number: "a number", boolean: "a boolean", date: "a Date"};
// a method's overloads: from f.min (else f.length) to f.max (else f.length) arguments; a call
// with another count is one MVEL finds no method for (an error, never an argument dropped)
  function opt(min, max, f) { f.min = min; f.max = max; return f; }
  function define(name, impl) {
    var s = Symbol(name), allowed = Object.keys(impl).map(function (k) { return KINDS[k]; }).join(" or ");
    __tbelS[name] = s;
    M[name] = impl;
    Object.keys(impl).forEach(function (k) {
      var f = impl[k];
      if (f.min === undefined) { f.min = f.max = f.length; }
    });
    Object.defineProperty(Object.prototype, s, {configurable: true, writable: true, enumerable: false,
      value: function () {
        var k = kind(this), f = impl[k], n = arguments.length;
        if (f === undefined) { throw new TypeError(name + "(): " + (KINDS[k] || k) + " is not " + allowed); }
        if (n < f.min || n > f.max) {
          throw new TypeError("unable to resolve method: " + name + "() with " + n + " argument" + (n === 1 ? "" : "s") + " on " + (KINDS[k] || k));
        }
        return f.apply(this, arguments);
      }});
  }
  function getter(name, method) {
    var s = Symbol(name);
    __tbelG[name] = s;
    Object.defineProperty(Object.prototype, s, {configurable: true, enumerable: false,
      get: function () { return this[__tbelS[method]](); }});
  }
// java.util.List / Map.size, isEmpty; ExecutionArrayList.length; String.length, isEmpty
  define("size", {list: function () { return this.length; },
    map: function () { return Object.keys(this).length; }});
  define("isEmpty", {list: function () { return this.length === 0; },
    map: function () { return Object.keys(this).length === 0; },
    text: function () { return this.length === 0; }});
  define("length", {list: function () { return this.length; }, text: function () { return this.length; }});
// ArrayList.get (index checked); Map.get: null when absent
  define("get", {list: function (i) { return this[checkIndex("get", i, this.length)]; },
    map: function (k) { k = key(k); return own.call(this, k) ? this[k] : null; }});
// ExecutionArrayList.remove(int) (a whole number: an index) / remove(Object) (the first equal
// element; true or false); ExecutionHashMap.remove(key): the value, null when absent;
// remove(key, value) (HashMap.remove(Object, Object)): removed only when the value equals, true
// or false
  define("remove", {list: function (x) {
      if (typeof x === "number" && x % 1 === 0) {
        if (x < 0 || x >= this.length) {
          throw new RangeError("remove(" + x + "): index out of bounds for length " + this.length);
        }
        return this.splice(x, 1)[0];
      }
      for (var i = 0; i < this.length; i++) {
        if (same(this[i], x)) { this.splice(i, 1); return true; }
      }
      return false;
    },
    map: opt(1, 2, function (k, v) {
      k = key(k);
      if (arguments.length >= 2) {
        if (!own.call(this, k) || !same(this[k], v)) { return false; }
        delete this[k];
        return true;
      }
      if (!own.call(this, k)) { return null; }
      var value = this[k];
      delete this[k];
      return value;
    })});
// ArrayList.clear, Map.clear; equals: List/Map/String/ExecutionEntry/Integer/Double/Boolean.equals
  define("clear", {list: function () { this.length = 0; return null; },
    map: function () { var ks = Object.keys(this); for (var i = 0; i < ks.length; i++) { delete this[ks[i]]; } return null; }});
  define("equals", {list: function (o) { return same(this, o); }, map: function (o) { return same(this, o); },
    entry: function (o) { return o instanceof Entry && same(this.key, o.key) && same(this.value, o.value); },
    text: function (o) { return typeof o === "string" && o === String(this); },
    number: function (o) { return typeof o === "number" && (this === o || (o !== o && this !== this)); },
    boolean: function (o) { return o === this; }});
// ExecutionArrayList.set: the element it replaced; add(E): true; add(int, E): inserted;
// addAll(Collection) / addAll(int, Collection): whether the list changed
  define("set", {list: function (i, v) {
    checkIndex("set", i, this.length);
    var old = this[i];
    this[i] = v;
    return old;
  }});
  define("add", {list: opt(1, 2, function (a, b) {
    if (arguments.length < 2) { this.push(a); return true; }
    this.splice(checkAddIndex("add", a, this.length), 0, b);
    return null;
  })});
  define("addAll", {list: opt(1, 2, function (a, b) {
    var at = this.length, c = a, i;
    if (arguments.length >= 2) { at = checkAddIndex("addAll", a, this.length); c = b; }
    aList("addAll", c);
    c = c.slice();
// element by element: a spread of the list into splice's arguments fails past 65535 elements
    var tail = this.splice(at, this.length - at);
    for (i = 0; i < c.length; i++) { this.push(c[i]); }
    for (i = 0; i < tail.length; i++) { this.push(tail[i]); }
    return c.length > 0;
  })});
// ArrayList.contains, indexOf, lastIndexOf (equals); ExecutionArrayList.indexOf(Object, int)
// (the index in slice(fromIndex) plus fromIndex as given: [1, 2, 3].indexOf(3, -1) is 0 + -1);
// String.contains, indexOf, lastIndexOf
  define("contains", {list: function (x) { return M.indexOf.list.call(this, x) >= 0; },
    text: function (s) { return String(this).indexOf(aText("contains", s)) >= 0; }});
  define("indexOf", {list: opt(1, 2, function (x, from) {
      var start = 0, n = this.length, i;
      if (arguments.length < 2) {
        for (i = 0; i < n; i++) { if (same(this[i], x)) { return i; } }
        return -1;
      }
      whole("indexOf", from);
      start = from < -n ? 0 : from < 0 ? from + n : from;
      if (start > n) { throw new RangeError("fromIndex(" + start + ") > toIndex(" + n + ")"); }
      for (i = start; i < n; i++) { if (same(this[i], x)) { return i - start + from; } }
      return -1;
    }),
    text: opt(1, 2, function (s, from) {
      aText("indexOf", s);
      return arguments.length >= 2 ? String(this).indexOf(s, whole("indexOf", from)) : String(this).indexOf(s);
    })});
  define("lastIndexOf", {list: function (x) {
      for (var i = this.length - 1; i >= 0; i--) { if (same(this[i], x)) { return i; } }
      return -1;
    },
    text: opt(1, 2, function (s, from) {
      aText("lastIndexOf", s);
      if (arguments.length < 2) { return String(this).lastIndexOf(s); }
      return whole("lastIndexOf", from) < 0 ? -1 : String(this).lastIndexOf(s, from);
    })});
// ExecutionArrayList.push (add: true), pop (null when empty), shift (remove(0): an empty
// list throws), unshift (each argument inserted at the front, in order), join (each element's
// toString joined, then ", " made "," and "[" "]" taken out; a null element throws)
  define("push", {list: function (v) { this.push(v); return true; }});
  define("pop", {list: function () { return this.length === 0 ? null : this.pop(); }});
  define("shift", {list: function () { checkIndex("shift", 0, this.length); return this.shift(); }});
  define("unshift", {list: opt(0, Infinity, function () {
    for (var i = 0; i < arguments.length; i++) { this.splice(i, 0, arguments[i]); }
    return null;
  })});
  define("join", {list: opt(0, 1, function (sep) {
    if (arguments.length === 0) { sep = ","; }
    var parts = [];
    for (var i = 0; i < this.length; i++) {
      if (this[i] === null || this[i] === undefined) { throw new TypeError("join(): the list holds null"); }
      parts.push(text(this[i]));
    }
    return parts.join(text(sep)).split(", ").join(",").split("[").join("").split("]").join("");
  })});
// Map.containsKey, containsValue, getOrDefault
  define("containsKey", {map: function (k) { return own.call(this, key(k)); }});
  define("containsValue", {map: function (v) {
    var ks = Object.keys(this);
    for (var i = 0; i < ks.length; i++) { if (same(this[ks[i]], v)) { return true; } }
    return false;
  }});
  define("getOrDefault", {map: function (k, d) { k = key(k); return own.call(this, k) ? this[k] : d; }});
// ExecutionHashMap.put: the previous value or null; a null value removes the key
  define("put", {map: function (k, v) {
    k = key(k);
    var old = own.call(this, k) ? this[k] : null;
    if (v === null || v === undefined) { delete this[k]; } else { this[k] = v; }
    return old;
  }});
// ExecutionHashMap.putAll (HashMap.putAll: every key, null values too), putIfAbsent
// (HashMap.putIfAbsent: set when absent or null; the previous value)
  define("putAll", {map: function (m) {
    aMap("putAll", m);
    var ks = Object.keys(m);
    for (var i = 0; i < ks.length; i++) { this[ks[i]] = m[ks[i]]; }
    return null;
  }});
  define("putIfAbsent", {map: function (k, v) {
    k = key(k);
    var old = own.call(this, k) ? this[k] : null;
    if (old === null || old === undefined) { this[k] = v; }
    return old;
  }});
// HashMap.replace(k, v): the previous value, null (nothing set) when absent; replace(k, old,
// new): true when the value equals old; String.replace(CharSequence, CharSequence): every
// occurrence, literally
  define("replace", {map: opt(2, 3, function (k, a, b) {
      k = key(k);
      if (arguments.length >= 3) {
        if (!own.call(this, k) || !same(this[k], a)) { return false; }
        this[k] = b;
        return true;
      }
      if (!own.call(this, k)) { return null; }
      var old = this[k];
      this[k] = a;
      return old;
    }),
    text: function (a, b) {
      aText("replace", a);
      aText("replace", b);
      return String(this).replaceAll(a, function () { return b; });
    }});
// ExecutionHashMap.keys / values (new lists), keySet and entrySet (copies: LinkedHashSet of
// ExecutionEntry); ExecutionEntry's getters
  define("keys", {map: function () { return Object.keys(this); }});
  define("keySet", {map: function () { return Object.keys(this); }});
  define("values", {map: function () { var m = this; return Object.keys(m).map(function (k) { return m[k]; }); }});
  define("entrySet", {map: function () { var m = this; return Object.keys(m).map(function (k) { return new Entry(k, m[k]); }); }});
  define("getKey", {entry: function () { return this.key; }});
  define("getValue", {entry: function () { return this.value; }});
  define("setValue", {entry: function (v) { var old = this.value; this.value = v; return old; }});
// String.equalsIgnoreCase (regionMatches: per char, upper case then lower case)
  define("equalsIgnoreCase", {text: function (o) {
    var s = String(this), i, a, b, ua, ub;
    if (typeof o !== "string" || o.length !== s.length) { return false; }
    function up(c) { var u = c.toUpperCase(); return u.length === 1 ? u : c; }
    function low(c) { var l = c.toLowerCase(); return l.length === 1 ? l : c; }
    for (i = 0; i < s.length; i++) {
      a = s[i]; b = o[i];
      if (a === b) { continue; }
      ua = up(a); ub = up(b);
      if (ua === ub || low(ua) === low(ub)) { continue; }
      return false;
    }
    return true;
  }});
// String.startsWith(prefix[, offset]), endsWith; substring (begin/end checked:
// StringIndexOutOfBoundsException), toUpperCase, toLowerCase, trim (characters <= U+0020)
  define("startsWith", {text: opt(1, 2, function (p, from) {
    aText("startsWith", p);
    var s = String(this), at = arguments.length >= 2 ? whole("startsWith", from) : 0;
    return at >= 0 && at <= s.length - p.length && s.substr(at, p.length) === p;
  })});
  define("endsWith", {text: function (p) { return String(this).endsWith(aText("endsWith", p)); }});
  define("substring", {text: opt(1, 2, function (begin, end) {
    var s = String(this);
    if (arguments.length < 2) { end = s.length; }
    whole("substring", begin);
    whole("substring", end);
    if (begin < 0 || end > s.length || begin > end) {
      throw new RangeError("begin " + begin + ", end " + end + ", length " + s.length);
    }
    return s.substring(begin, end);
  })});
  define("toUpperCase", {text: function () { return String(this).toUpperCase(); }});
  define("toLowerCase", {text: function () { return String(this).toLowerCase(); }});
  define("trim", {text: function () {
    var s = String(this), a = 0, b = s.length;
    while (a < b && s.charCodeAt(a) <= 32) { a++; }
    while (b > a && s.charCodeAt(b - 1) <= 32) { b--; }
    return s.slice(a, b);
  }});
// java.util.regex.Pattern as a JavaScript RegExp (flag "u": a character is a code point, as in
// Java). The common subset is translated where the two read the same text differently: "." is
// any character but Java's line terminators (\n \r \u0085 \u2028 \u2029), "$" also matches
// before a final line terminator (Pattern.Dollar), \s is Java's [ \t\n\x0B\f\r], \Q...\E is
// quoted, \A \z \Z, \a \e \0oo \cX \x{h...} and the ASCII \p{Lower}-like classes are written out,
// a "]" first in a class is a literal, a leading (?i) / (?s) are flags. Java's errors are
// PatternSyntaxException (a dangling quantifier, "{" that is no repetition, an unknown escape,
// an unclosed class); what Java reads but this translation cannot is an error naming it
// (possessive quantifiers, atomic groups, back references, inline flags elsewhere, nested
// classes and &&, \G \h \v \R \X and Unicode properties).
  var REGEX_CACHE = new Map();
  var SPACE = " \\t\\n\\x0B\\f\\r";
  var DOT = "[^\\n\\r\\u0085\\u2028\\u2029]";
  var DOLLAR = "(?=(?:\\r\\n|[\\n\\r\\u0085\\u2028\\u2029])?$)(?!(?<=\\r)\\n)";
  var POSIX = {Lower: "a-z", Upper: "A-Z", ASCII: "\\x00-\\x7F", Alpha: "a-zA-Z", Digit: "0-9",
    Alnum: "a-zA-Z0-9", Punct: "!-\\/:-@\\[-`{-~", Graph: "!-~", Print: " -~", Blank: " \\t",
    Cntrl: "\\x00-\\x1F\\x7F", XDigit: "0-9a-fA-F", Space: SPACE};
  var SYNTAX = "^$\\.*+?()[]{}|/";
// \b and \B as Java 17's Pattern.Bound: a word character is a letter, a decimal digit or "_"
// (Bound.isWord: Character.isLetterOrDigit), and a non-spacing mark after a letter or digit (and
// marks) counts as one (Bound.check, hasBaseCharacter); JavaScript's \b is ASCII only
  var WORD_BEFORE = "(?<=[\\p{L}\\p{Nd}_]|[\\p{L}\\p{Nd}]\\p{Mn}+)", NOT_WORD_BEFORE = "(?<![\\p{L}\\p{Nd}_]|[\\p{L}\\p{Nd}]\\p{Mn}+)";
  var WORD_AFTER = "(?:(?=[\\p{L}\\p{Nd}_])|(?=\\p{Mn})(?<=[\\p{L}\\p{Nd}]\\p{Mn}*))";
  var NOT_WORD_AFTER = "(?![\\p{L}\\p{Nd}_])(?:(?!\\p{Mn})|(?<![\\p{L}\\p{Nd}]\\p{Mn}*))";
  var BOUND = "(?:" + WORD_BEFORE + NOT_WORD_AFTER + "|" + NOT_WORD_BEFORE + WORD_AFTER + ")";
  var NOT_BOUND = "(?:" + WORD_BEFORE + WORD_AFTER + "|" + NOT_WORD_BEFORE + NOT_WORD_AFTER + ")";
// PatternSyntaxException's message: its description, the index, the pattern on the next line
  function patternError(regex, at, what) {
    var e = new SyntaxError(what + " near index " + at + "\n" + regex);
    e.name = "PatternSyntaxException";
    return e;
  }
  function notHere(regex, what) {
    return new SyntaxError("the regular expression " + JSON.stringify(regex) + ": " + what + " is not supported here (see docs/rules-scripts.md)");
  }
  function codePoint(cp) { return "\\u{" + cp.toString(16) + "}"; }
// an ASCII letter's other case (else -1): CASE_INSENSITIVE without UNICODE_CASE folds US-ASCII only
  function otherCase(cp) { return cp >= 65 && cp <= 90 ? cp + 32 : cp >= 97 && cp <= 122 ? cp - 32 : -1; }
// the other case of the ASCII letters of the range lo-hi (Pattern.CIRange: ch, or its ASCII upper or
// lower case, in the range)
  function otherCaseRange(lo, hi) {
    var s = "", a = Math.max(lo, 65), b = Math.min(hi, 90);
    if (a <= b) { s += codePoint(a + 32) + "-" + codePoint(b + 32); }
    a = Math.max(lo, 97); b = Math.min(hi, 122);
    if (a <= b) { s += codePoint(a - 32) + "-" + codePoint(b - 32); }
    return s;
  }
  function translateRegex(regex) {
    var i = 0, n = regex.length, out = "", flags = "u", dotAll = false, atom = false, c, m;
// assertion: the last atom is an anchor or a lookaround (Java repeats one, JavaScript refuses it);
// groups: per open group, whether it is a lookaround
    var assertion = false, groups = [];
// (?i): fold, each ASCII letter as a class of its two cases (not JavaScript's "i" flag, which folds
// all of Unicode: "é" would match "(?i)É", Java's does not); lastCp: the code point of the one
// character esc() just read (-1: a class of characters, or none)
    var fold = false, lastCp = -1;
    m = /^\(\?([a-zA-Z]+)\)/.exec(regex);
    if (m) {
      if (!/^[is]+$/.test(m[1])) { throw notHere(regex, "the inline flag group (?" + m[1] + ")"); }
      fold = m[1].indexOf("i") >= 0;
      dotAll = m[1].indexOf("s") >= 0;
      i = m[0].length;
    }
    function esc(inClass) {
      var d = regex[i + 1], at = i, k, v, name;
      lastCp = -1;
      if (d === undefined) { throw patternError(regex, n, "Unexpected internal error"); }
      if (!/[0-9A-Za-z]/.test(d)) {
        i += 2;
        lastCp = d.codePointAt(0);
        if (SYNTAX.indexOf(d) >= 0 || (inClass && d === "-")) { return "\\" + d; }
        return d;
      }
      i += 2;
      switch (d) {
        case "d": case "D": case "w": case "W": case "t": case "n": case "r": case "f": return "\\" + d;
        case "s": return inClass ? SPACE : "[" + SPACE + "]";
        case "S":
          if (inClass) { throw notHere(regex, "\\S inside a character class"); }
          return "[^" + SPACE + "]";
        case "b": case "B":
          if (inClass) { throw notHere(regex, "\\" + d + " inside a character class"); }
          return d === "b" ? BOUND : NOT_BOUND;
        case "a": return "\\x07";
        case "e": return "\\x1B";
        case "A": case "z": case "Z":
          if (inClass) { throw patternError(regex, at + 1, "Illegal/unsupported escape sequence"); }
          assertion = true;
          return d === "A" ? "^" : d === "z" ? "$" : DOLLAR;
        case "x":
          m = /^([0-9a-fA-F]{2})|^\{([0-9a-fA-F]+)\}/.exec(regex.slice(i));
          if (!m) { throw patternError(regex, at, "Illegal hexadecimal escape sequence"); }
          i += m[0].length;
          v = parseInt(m[1] || m[2], 16);
          if (v > 0x10FFFF) { throw patternError(regex, at, "Hexadecimal codepoint is too big"); }
          lastCp = v;
          return codePoint(v);
        case "u":
          m = /^[0-9a-fA-F]{4}/.exec(regex.slice(i));
          if (!m) { throw patternError(regex, at, "Illegal Unicode escape sequence"); }
          i += 4;
          lastCp = parseInt(m[0], 16);
// a high surrogate's escape then a low one's is the one code point (Pattern.uxxxx)
          k = /^\\u(d[c-f][0-9a-f]{2})/i.exec(regex.slice(i));
          if (lastCp >= 0xD800 && lastCp <= 0xDBFF && k) {
            i += 6;
            lastCp = 0x10000 + ((lastCp - 0xD800) << 10) + (parseInt(k[1], 16) - 0xDC00);
          }
          return codePoint(lastCp);
        case "0":
          m = /^[0-7]{1,3}/.exec(regex.slice(i));
          if (!m) { throw patternError(regex, at, "Illegal octal escape sequence"); }
          k = m[0].length === 3 && m[0][0] > "3" ? m[0].slice(0, 2) : m[0];
          i += k.length;
          lastCp = parseInt(k, 8);
          return codePoint(lastCp);
        case "c":
          if (i >= n) { throw patternError(regex, at, "Illegal control escape sequence"); }
          v = regex.codePointAt(i);
          i += v > 0xFFFF ? 2 : 1;
          lastCp = v ^ 64;
          return codePoint(lastCp);
        case "Q":
          k = regex.indexOf("\\E", i);
          if (k < 0) { k = n; }
          v = Array.from(regex.slice(i, k)).map(function (ch) {
            var o = fold ? otherCase(ch.codePointAt(0)) : -1;
            if (o >= 0) { return inClass ? ch + codePoint(o) : "[" + ch + codePoint(o) + "]"; }
            return SYNTAX.indexOf(ch) >= 0 || ch === "-" ? "\\" + ch : ch; }).join("");
          i = Math.min(k + 2, n);
          return inClass ? v : "(?:" + v + ")";
        case "p": case "P":
          m = /^\{([A-Za-z]+)\}/.exec(regex.slice(i));
          name = m ? m[1] : "";
          if (!m || !own.call(POSIX, name)) { throw notHere(regex, "the character property \\" + d + regex.slice(i, i + (m ? m[0].length : 1))); }
          i += m[0].length;
// (case-insensitive, \p{Lower} and \p{Upper} are either case: CharPredicates.forPOSIXName)
          if (fold && (name === "Lower" || name === "Upper")) { name = "Alpha"; }
          if (d === "p") { return inClass ? POSIX[name] : "[" + POSIX[name] + "]"; }
          if (inClass) { throw notHere(regex, "\\P{...} inside a character class"); }
          return "[^" + POSIX[name] + "]";
        case "1": case "2": case "3": case "4": case "5": case "6": case "7": case "8": case "9":
          throw notHere(regex, "the back reference \\" + d);
        case "k": throw notHere(regex, "the named back reference \\k");
        case "G": case "h": case "H": case "v": case "V": case "R": case "X": case "N": case "E":
          throw notHere(regex, "\\" + d);
      }
      throw patternError(regex, at + 1, "Illegal/unsupported escape sequence");
    }
    function klass() {
      var start = i, s = "[";
      i++;
      if (regex[i] === "^") { s += "^"; i++; }
      if (regex[i] === "]") { s += "\\]"; i++; }
      for (;;) {
        if (i >= n) { throw patternError(regex, n - 1, "Unclosed character class"); }
        c = regex[i];
        if (c === "]") { i++; return s + "]"; }
        if (c === "[") { throw notHere(regex, "a class inside a character class ([a[b]])"); }
        if (c === "&" && regex[i + 1] === "&") { throw notHere(regex, "an intersection of character classes (&&)"); }
        var item, cp, hi;
        if (c === "\\") {
          item = esc(true);
          cp = lastCp;
// after a class escape (\w, \p{Digit}) "-" is a literal (Pattern.range: no range from a class)
          if (cp < 0 && regex[i] === "-" && i + 1 < n && regex[i + 1] !== "]") { s += item + "\\-"; i++; continue; }
        } else {
          cp = regex.codePointAt(i); item = String.fromCodePoint(cp); i += cp > 0xFFFF ? 2 : 1;
        }
        if (!fold || cp < 0) { s += item; continue; }
        if (regex[i] === "-" && i + 1 < n && regex[i + 1] !== "]") {
          i++;
          if (regex[i] === "\\") { item += "-" + esc(true); hi = lastCp; } else {
            hi = regex.codePointAt(i); item += "-" + String.fromCodePoint(hi); i += hi > 0xFFFF ? 2 : 1;
          }
          s += item + (hi >= cp ? otherCaseRange(cp, hi) : "");
          continue;
        }
        s += item + (otherCase(cp) >= 0 ? codePoint(otherCase(cp)) : "");
      }
    }
    while (i < n) {
      c = regex[i];
      if (c === "\\") {
        assertion = false;
        m = esc(false);
        out += fold && otherCase(lastCp) >= 0 ? "[" + m + codePoint(otherCase(lastCp)) + "]" : m;
        atom = true;
        continue;
      }
      if (c === "[") { out += klass(); atom = true; assertion = false; continue; }
      if (c === "(") {
        if (regex[i + 1] === "?") {
          m = /^\(\?(?::|=|!|<=|<!|<[a-zA-Z][a-zA-Z0-9]*>)/.exec(regex.slice(i));
          if (!m) {
            throw notHere(regex, regex[i + 2] === ">" ? "an atomic group (?>...)" : "an inline flag group (?...) other than a leading (?i) or (?s)");
          }
          out += m[0];
          i += m[0].length;
          groups.push(/^\(\?<?[=!]$/.test(m[0]));
        } else { out += "("; i++; groups.push(false); }
        atom = false;
        continue;
      }
      if (c === "*" || c === "+" || c === "?" || c === "{") {
        m = c === "{" ? /^\{\d+(?:,\d*)?\}/.exec(regex.slice(i)) : [c];
        if (!m) { throw patternError(regex, i, "Illegal repetition"); }
        if (!atom) { throw patternError(regex, i, "Dangling meta character '" + c + "'"); }
        if (assertion) { throw notHere(regex, "a quantifier (" + m[0] + ") on an anchor or a lookaround"); }
        out += m[0];
        i += m[0].length;
        if (regex[i] === "?") { out += "?"; i++; }
        else if (regex[i] === "+") { throw notHere(regex, "the possessive quantifier " + m[0] + "+"); }
        atom = false;
        continue;
      }
      atom = c !== "|";
      assertion = c === "^" || c === "$" || (c === ")" && groups.pop() === true);
      if (fold && otherCase(c.charCodeAt(0)) >= 0) { out += "[" + c + String.fromCharCode(otherCase(c.charCodeAt(0))) + "]"; i++; continue; }
      out += c === "." ? (dotAll ? "[^]" : DOT) : c === "$" ? DOLLAR : c === "]" || c === "}" ? "\\" + c : c;
      i++;
    }
    return {source: out, flags: flags};
  }
// the RegExp of a Java regex, compiled once per context (whole: anchored, for String.matches;
// else global, for Pattern.split's find loop); a few hundred patterns at most are kept
  function javaRegExp(regex, whole) {
    var k = (whole ? "m" : "f") + regex, r = REGEX_CACHE.get(k), t;
    if (r === undefined) {
      t = translateRegex(regex);
      try {
        r = new RegExp(whole ? "^(?:" + t.source + ")$" : t.source, whole ? t.flags : t.flags + "g");
      } catch (e) {
        throw patternError(regex, 0, String(e.message));
      }
      if (REGEX_CACHE.size >= 256) { REGEX_CACHE.clear(); }
      REGEX_CACHE.set(k, r);
    }
    r.lastIndex = 0;
    return r;
  }
// a script's literal regex, checked when it is compiled (sandbox.py): its error, if any
  __tbelRegex = function (regex) { javaRegExp(regex, true); javaRegExp(regex, false); return null; };
// String.split(regex[, limit]) (Pattern.split, with String.split's fast path for a one-character
// literal): a limit > 0 gives at most limit parts (the last holds the rest), 0 (the default)
// removes trailing empty strings, < 0 keeps them; no match: the text itself; a zero-width match
// at the start gives no leading empty string
  define("split", {text: opt(1, 2, function (regex, limit) {
    aText("split", regex);
    var s = String(this), sep = null, parts = [], index = 0, next, end, r, m;
    limit = arguments.length >= 2 ? whole("split", limit) : 0;
    if (regex.length === 1 && ".$|()[{^?*+\\".indexOf(regex) < 0) { sep = regex; }
    else if (regex.length === 2 && regex[0] === "\\" && !/[0-9A-Za-z]/.test(regex[1])) { sep = regex[1]; }
    if (sep !== null && sep.charCodeAt(0) >= 0xD800 && sep.charCodeAt(0) <= 0xDFFF) { sep = null; }
    if (sep === null) { r = javaRegExp(regex, false); }
    for (;;) {
      if (sep !== null) {
        next = s.indexOf(sep, index);
        if (next < 0) { break; }
        end = next + 1;
      } else {
        m = r.exec(s);
        if (m === null) { break; }
        next = m.index;
        end = next + m[0].length;
        if (end === next) { r.lastIndex = end < s.length && s.codePointAt(end) > 0xFFFF ? end + 2 : end + 1; }
      }
      if (limit > 0 && parts.length >= limit - 1) {
        parts.push(s.substring(index));
        index = end;
        break;
      }
      if (index === 0 && next === 0 && end === 0) { continue; }
      parts.push(s.substring(index, next));
      index = end;
    }
    if (index === 0) { return [s]; }
    if (limit <= 0 || parts.length < limit) { parts.push(s.substring(index)); }
    if (limit === 0) { while (parts.length > 0 && parts[parts.length - 1] === "") { parts.pop(); } }
    return parts;
  })});
// String.replaceAll(regex, replacement) / replaceFirst (Matcher.replaceAll / replaceFirst):
// the replacement as Matcher.appendReplacement reads it: \\x is x, $n the group n (as many
// digits as name a group), ${name} a named group, an unmatched group nothing; its errors
// (IllegalArgumentException, IndexOutOfBoundsException) at the first match, as in Java
  function expandReplacement(rep, m) {
    var out = "", i = 0, c, ref, name, next, groups = m.length - 1, v;
    while (i < rep.length) {
      c = rep[i];
      if (c === "\\") {
        i++;
        if (i === rep.length) { throw iae("character to be escaped is missing"); }
        out += rep[i++];
        continue;
      }
      if (c !== "$") { out += c; i++; continue; }
      i++;
      if (i === rep.length) { throw iae("Illegal group reference: group index is missing"); }
      if (rep[i] === "{") {
        i++;
        name = "";
        while (i < rep.length && /[A-Za-z0-9]/.test(rep[i])) { name += rep[i++]; }
        if (name.length === 0) { throw iae("named capturing group has 0 length name"); }
        if (rep[i] !== "}") { throw iae("named capturing group is missing trailing '}'"); }
        if (/^[0-9]/.test(name)) { throw iae("capturing group name {" + name + "} starts with digit character"); }
        if (!m.groups || !own.call(m.groups, name)) { throw iae("No group with name {" + name + "}"); }
        i++;
        v = m.groups[name];
      } else {
        ref = rep.charCodeAt(i) - 48;
        if (ref < 0 || ref > 9) { throw iae("Illegal group reference"); }
        i++;
        while (i < rep.length && (next = rep.charCodeAt(i) - 48) >= 0 && next <= 9 && ref * 10 + next <= groups) {
          ref = ref * 10 + next;
          i++;
        }
        if (ref > groups) { var e = new RangeError("No group " + ref); e.name = "IndexOutOfBoundsException"; throw e; }
        v = m[ref];
      }
      if (v !== undefined) { out += v; }
    }
    return out;
  }
  function iae(message) { var e = new Error(message); e.name = "IllegalArgumentException"; return e; }
  function javaReplace(name, s, regex, rep, all) {
    var r = javaRegExp(aText(name, regex), false), out = "", index = 0, m;
    aText(name, rep);
    while ((m = r.exec(s)) !== null) {
      out += s.substring(index, m.index) + expandReplacement(rep, m);
      index = m.index + m[0].length;
      if (!all) { break; }
      if (m[0].length === 0) { r.lastIndex = index < s.length && s.codePointAt(index) > 0xFFFF ? index + 2 : index + 1; }
    }
    return out + s.substring(index);
  }
  define("replaceAll", {text: function (regex, rep) { return javaReplace("replaceAll", String(this), regex, rep, true); }});
  define("replaceFirst", {text: function (regex, rep) { return javaReplace("replaceFirst", String(this), regex, rep, false); }});
// String.matches(regex) (Pattern.matches: the whole text), charAt(index) (a one-character text;
// StringIndexOutOfBoundsException as Java 17's String.charAt words it)
  define("matches", {text: function (regex) { return javaRegExp(aText("matches", regex), true).test(String(this)); }});
  define("charAt", {text: function (i) {
    var s = String(this);
    whole("charAt", i);
    if (i < 0 || i >= s.length) { throw new RangeError("String index out of range: " + i); }
    return s[i];
  }});
// ExecutionArrayList.slice([start[, end]]) (ArrayTools.initStartIndex / initEndIndex, then
// ArrayList.subList: a start after the end throws), concat(list) (a new list), reverse (in
// place), toReversed (a new list); String.concat
// a copy of a list of Bytes holds Bytes
  function bytesIf(list, copy) { if (__tbelBytes.has(list)) { __tbelBytes.add(copy); } return copy; }
  function startIndex(i, n) { return i < -n ? 0 : i < 0 ? i + n : i; }
  function endIndex(i, n) { return i < -n ? 0 : i < 0 ? i + n : Math.min(i, n); }
  define("slice", {list: opt(0, 2, function (a, b) {
    var n = this.length;
    var from = arguments.length >= 1 ? startIndex(whole("slice", a), n) : 0;
    var to = arguments.length >= 2 ? endIndex(whole("slice", b), n) : n;
    if (from > to) { throw new RangeError("fromIndex(" + from + ") > toIndex(" + to + ")"); }
    return bytesIf(this, this.slice(from, to));
  })});
  define("concat", {list: function (c) { return this.concat(aList("concat", c)); },
    text: function (s) { return String(this) + aText("concat", s); }});
  define("reverse", {list: function () { this.reverse(); return null; }});
  define("toReversed", {list: function () { return bytesIf(this, this.slice().reverse()); }});
// ExecutionArrayList.sort([asc]) / toSorted([asc]): by number (Double.compareTo) when every
// element's text reads as a double (validateClazzInArrayIsOnlyNumber: Double.parseDouble of
// decimal text), else by text (String.valueOf, String.compareTo); stable, as List.sort
  function javaDoubleOf(v) {
    var t = text(v), a = 0, b = t.length;
    while (a < b && t.charCodeAt(a) <= 32) { a++; }
    while (b > a && t.charCodeAt(b - 1) <= 32) { b--; }
    t = t.slice(a, b);
    if (!/^[+-]?(NaN|Infinity|((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)[fFdD]?)$/.test(t)) { return null; }
    return Number(t.replace(/[fFdD]$/, ""));
  }
  function compareDoubles(x, y) {
    if (x < y) { return -1; }
    if (x > y) { return 1; }
    if (x === y) { return x !== 0 ? 0 : (1 / x < 0) === (1 / y < 0) ? 0 : 1 / x < 0 ? -1 : 1; }
    return x !== x ? (y !== y ? 0 : 1) : -1;
  }
  function sorted(list, asc) { return sortedBy(list, list, asc); }
// items in the order of their values (values[i] is items[i]'s), as sorted sorts a list
  function sortedBy(items, values, asc) {
    var nums = values.map(javaDoubleOf), i, keyed = [];
    var numeric = nums.every(function (x) { return x !== null; });
    for (i = 0; i < items.length; i++) { keyed.push([numeric ? nums[i] : text(values[i]), items[i]]); }
    keyed.sort(function (p, q) {
      var c = numeric ? compareDoubles(p[0], q[0]) : (p[0] < q[0] ? -1 : p[0] > q[0] ? 1 : 0);
      return asc ? c : -c;
    });
    return keyed.map(function (p) { return p[1]; });
  }
// ExecutionHashMap.sortByKey([asc]) / sortByValue([asc]): the map's entries put back in the
// order of its keys (keys().sort(asc), as a list sorts) or of its values (sortMapByValue: by
// number when every value reads as one, else by String.valueOf; stable), in place, null;
// toSortedByKey / toSortedByValue: a new map in that order. (A key that is a whole number, "7",
// comes first in ascending order whatever the sort: JavaScript objects order such keys so.)
  function keysByKey(m, asc) { var ks = Object.keys(m); return sortedBy(ks, ks, asc); }
  function keysByValue(m, asc) {
    var ks = Object.keys(m);
    return sortedBy(ks, ks.map(function (k) { return m[k]; }), asc);
  }
  function reordered(m, ks) {
    var out = {};
    for (var i = 0; i < ks.length; i++) { out[ks[i]] = m[ks[i]]; }
    return out;
  }
  function reorder(m, ks) {
    var vals = ks.map(function (k) { return m[k]; }), i;
    for (i = 0; i < ks.length; i++) { delete m[ks[i]]; }
    for (i = 0; i < ks.length; i++) { m[ks[i]] = vals[i]; }
    return null;
  }
  define("sortByKey", {map: opt(0, 1, function () { return reorder(this, keysByKey(this, ascending("sortByKey", arguments))); })});
  define("sortByValue", {map: opt(0, 1, function () { return reorder(this, keysByValue(this, ascending("sortByValue", arguments))); })});
  define("toSortedByKey", {map: opt(0, 1, function () { return reordered(this, keysByKey(this, ascending("toSortedByKey", arguments))); })});
  define("toSortedByValue", {map: opt(0, 1, function () { return reordered(this, keysByValue(this, ascending("toSortedByValue", arguments))); })});
// ExecutionHashMap.clone (slice(): a new map, the same values), ArrayList.clone (a new list)
  define("clone", {map: function () { return reordered(this, Object.keys(this)); },
    list: function () { return bytesIf(this, this.slice()); }});
  function ascending(name, args) {
    if (args.length === 0) { return true; }
    if (typeof args[0] !== "boolean") { throw new TypeError(name + "(): asc is not true or false"); }
    return args[0];
  }
  define("sort", {list: opt(0, 1, function () {
    var out = sorted(this, ascending("sort", arguments));
    for (var i = 0; i < out.length; i++) { this[i] = out[i]; }
    return null;
  })});
  define("toSorted", {list: opt(0, 1, function () { return bytesIf(this, sorted(this, ascending("toSorted", arguments))); })});
// Java's toString: String.valueOf of the value (see text)
  define("toString", {list: function () { return text(this); }, map: function () { return text(this); },
    entry: function () { return text(this); }, text: function () { return String(this); },
    number: function () { return text(this); }, boolean: function () { return String(this); },
    date: function () { return text(this); }});
// MVEL reads x.size as x.size(): PropertyTools.getGetter takes a method of that name with no
// argument before a map's key (ReflectiveAccessorOptimizer.getBeanProperty)
  getter("size", "size");
  getter("empty", "isEmpty");
  getter("isEmpty", "isEmpty");
  getter("keys", "keys");
  getter("values", "values");
  getter("keySet", "keySet");
  getter("entrySet", "entrySet");
// ThingsBoard's TbDate (TBEL's Date): an instant, epoch milliseconds plus the nanoseconds past
// them (addNanos). The server's zone (ZoneId.systemDefault) is UTC here, as on ThingsBoard's
// images: getFullYear and getUTCFullYear agree. Months are 1 to 12 and days of the week 1
// (Monday) to 7, as java.time gives them. Its localized texts (toString, toLocaleString, ...)
// are not made here: a Date in the script's value, or its toString, is an error.
  // the instant under symbol keys: no script reads or writes it but through the methods (MVEL
// has no property ms on a TbDate)
  var MS = Symbol("ms"), NS = Symbol("ns");
  function TbDate(ms, ns) { this[MS] = ms; this[NS] = ns; }
  function dateError(message) { var e = new Error(message); e.name = "DateTimeException"; return e; }
  function notParsed(s) { var e = new Error("Cannot parse value [" + s + "] as instant"); e.name = "ConversionException"; return e; }
  var MONTHS = ["JANUARY", "FEBRUARY", "MARCH", "APRIL", "MAY", "JUNE", "JULY", "AUGUST", "SEPTEMBER", "OCTOBER", "NOVEMBER", "DECEMBER"];
  var MON = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
  var DOW = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
  function leap(y) { return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0; }
  function monthDays(y, m) { return m === 2 ? (leap(y) ? 29 : 28) : [4, 6, 9, 11].indexOf(m) >= 0 ? 30 : 31; }
  function field(name, v, lo, hi, range) {
    if (!(v >= lo && v <= hi)) { throw dateError("Invalid value for " + name + " (valid values " + (range || lo + " - " + hi) + "): " + v); }
  }
// A region time zone's rules, one local year at a time ([offset at the year's start, second of
// the year of a change, offset from it, ...], or the error's text), and whether an id is known
// (null, or the error's text): given by the engine (edge_sync/rules/tbel_zones.py) through
// __tbelZoneLoad, between runs (the binding lets no script call into Python under a time
// limit). A run that lacks some goes on with a stand-in (an id taken as known, an offset of 0)
// and lists each in __tbelZoneRun.want ("id year", or "id"): the runners then discard its result,
// whatever the script made of it, and the engine loads them all and runs the message again.
// A run may use at most ZONE_RUN_CAP ids and ZONE_RUN_CAP years of them (counted per run, loaded
// or not, so a message's outcome never depends on the messages before it). The engine empties
// the cache (reset) only at the first load of a message, never in the middle of one.
  var zoneYears = Object.create(null), zoneIds = Object.create(null), ZONE_RUN_CAP = 16, parseJson = JSON.parse;
  __tbelZoneLoad = function (loadsJson, reset) {
    var loads = parseJson(loadsJson);
    if (reset) { zoneYears = Object.create(null); zoneIds = Object.create(null); }
    for (var i = 0; i < loads.length; i++) {
      if (loads[i][0].indexOf(" ") < 0) { zoneIds[loads[i][0]] = parseJson(loads[i][1]); } else { zoneYears[loads[i][0]] = parseJson(loads[i][1]); }
    }
  };
  function zoneError(message) { var e = new Error(message); e.name = "ZoneRulesException"; return e; }
  function zoneRun() {
    return __tbelZoneRun || (__tbelZoneRun = {want: [], used: Object.create(null), ids: 0, years: 0, over: false});
  }
// a key this run uses for the first time: counted (past the cap, the run fails: the runners give
// the engine's own error, whatever the script made of it), and listed when not loaded
  function zoneUse(run, key, isId, loaded) {
    if (run.used[key] === true) { return; }
    if ((isId ? run.ids : run.years) >= ZONE_RUN_CAP) {
      run.over = "sandbox: a call may use at most " + ZONE_RUN_CAP + " region time zones and " + ZONE_RUN_CAP + " years of them (see docs/rules-scripts.md)";
      throw new Error(run.over);
    }
    run.used[key] = true;
    if (isId) { run.ids++; } else { run.years++; }
    if (!loaded) { run.want.push(key); }
  }
  function checkedMs(ms) {
    if (!(Math.abs(ms) <= 8640000000000000)) {
      throw new TypeError("a date beyond the years -271821 to 275760 is not supported here (see docs/rules-scripts.md)");
    }
    return ms;
  }
// ZonedDateTime.of(year, month, day, hour, minute, second, nano, zone).toInstant(): Java's checks
// in Java's order (LocalDate.of, then LocalTime.of), the instant as [epoch ms, nanoseconds past
// it]; zone: a fixed offset (seconds east of UTC) or a region id ({id: ...}), whose offset at
// that local time the engine gives (in a gap: the offset before it, the local time moved later
// by the gap; in an overlap: the earlier offset, as ZonedDateTime.ofLocal)
  function zoned(y, m, d, h, mi, s, nano, zone) {
    field("Year", y, -999999999, 999999999);
    field("MonthOfYear", m, 1, 12);
    field("DayOfMonth", d, 1, 31, "1 - 28/31");
    if (d > monthDays(y, m)) {
      throw dateError(m === 2 && d === 29 ? "Invalid date 'February 29' as '" + y + "' is not a leap year" : "Invalid date '" + MONTHS[m - 1] + " " + d + "'");
    }
    field("HourOfDay", h, 0, 23);
    field("MinuteOfHour", mi, 0, 59);
    field("SecondOfMinute", s, 0, 59);
    field("NanoOfSecond", nano, 0, 999999999);
    var t = new Date(0);
    t.setUTCFullYear(y, m - 1, d);
    t.setUTCHours(h, mi, s, Math.floor(nano / 1000000));
    var ms = t.getTime();
    ms -= 1000 * (typeof zone === "number" ? zone : regionOffset(zone.id, checkedMs(ms)));
    return [checkedMs(ms), nano % 1000000];
  }
  function epochOf(y, m, d, h, mi, s, ms, offset) { return zoned(y, m, d, h, mi, s, ms * 1000000, offset)[0]; }
  function regionOffset(id, localMs) {
    var t = new Date(localMs), y = t.getUTCFullYear(), key = id + " " + y, rules = zoneYears[key];
    zoneUse(zoneRun(), key, false, rules !== undefined);
    if (rules === undefined) { return 0; }
    if (typeof rules === "string") { throw zoneError(rules.slice(rules.indexOf(": ") + 2)); }
    t.setUTCMonth(0, 1);
    t.setUTCHours(0, 0, 0, 0);
    var second = Math.floor((localMs - t.getTime()) / 1000), offset = rules[0];
    for (var i = 1; i < rules.length && second >= rules[i]; i += 2) { offset = rules[i + 1]; }
    return offset;
  }
// ZoneId.of(tz) (TbDate: none or "" is the server's zone, UTC): a fixed offset (ZoneOffset.of:
// Z, +h, +hh, +hh:mm, +hhmm, +hh:mm:ss, +hhmmss), UTC / GMT / UT alone or before an offset
// ("UTC+01:00", "GMT-5"), else a region id ("Europe/Berlin"), each failing with Java's text
  function offsetNumber(id, pos, colon) {
    if (colon && id[pos - 1] !== ":") { throw dateError("Invalid ID for ZoneOffset, colon not found when expected: " + id); }
    var a = id.charCodeAt(pos), b = id.charCodeAt(pos + 1);
    if (!(a >= 48 && a <= 57 && b >= 48 && b <= 57)) { throw dateError("Invalid ID for ZoneOffset, non numeric characters found: " + id); }
    return (a - 48) * 10 + (b - 48);
  }
  function zoneOffsetOf(id) {
    if (id === "Z") { return 0; }
    var h, mi = 0, s = 0;
    switch (id.length) {
      case 2: id = id[0] + "0" + id[1]; h = offsetNumber(id, 1, false); break;
      case 3: h = offsetNumber(id, 1, false); break;
      case 5: h = offsetNumber(id, 1, false); mi = offsetNumber(id, 3, false); break;
      case 6: h = offsetNumber(id, 1, false); mi = offsetNumber(id, 4, true); break;
      case 7: h = offsetNumber(id, 1, false); mi = offsetNumber(id, 3, false); s = offsetNumber(id, 5, false); break;
      case 9: h = offsetNumber(id, 1, false); mi = offsetNumber(id, 4, true); s = offsetNumber(id, 7, true); break;
      default: throw dateError("Invalid ID for ZoneOffset, invalid format: " + id);
    }
    if (id[0] !== "+" && id[0] !== "-") { throw dateError("Invalid ID for ZoneOffset, plus/minus not found when expected: " + id); }
    if (id[0] === "-") { h = -h; mi = -mi; s = -s; }
    // ZoneOffset.validate
    if (h < -18 || h > 18) { throw dateError("Zone offset hours not in valid range: value " + h + " is not in the range -18 to 18"); }
    if (mi < -59 || mi > 59) { throw dateError("Zone offset minutes not in valid range: value " + mi + " is not in the range -59 to 59"); }
    if (s < -59 || s > 59) { throw dateError("Zone offset seconds not in valid range: value " + s + " is not in the range -59 to 59"); }
    if (Math.abs(h) === 18 && (mi !== 0 || s !== 0)) { throw dateError("Zone offset not in valid range: -18:00 to +18:00"); }
    return h * 3600 + mi * 60 + s;
  }
// ZoneRegion.checkName; an id longer than any of the database's is unknown without asking
  function zoneRegion(id) {
    if (id.length < 2 || !/^[A-Za-z][A-Za-z0-9\/~._+-]*$/.test(id)) { throw dateError("Invalid ID for region-based ZoneId, invalid format: " + id); }
    if (id.length > 64) { throw zoneError("Unknown time-zone ID: " + id); }
    // ZoneRulesProvider.getProvider: an unknown id fails here, before the date's fields are read
    var known = zoneIds[id];
    zoneUse(zoneRun(), id, true, known !== undefined);
    if (typeof known === "string") { throw zoneError(known.slice(known.indexOf(": ") + 2)); }
    return {id: id};
  }
  function zonePrefixed(id, n) {
    if (id.length === n) { return 0; }
    if (id[n] !== "+" && id[n] !== "-") { return zoneRegion(id); }
    try { return zoneOffsetOf(id.slice(n)); } catch (e) { throw dateError("Invalid ID for offset-based ZoneId: " + id); }
  }
  function zoneOf(tz) {
    if (tz === null || tz === undefined || tz === "") { return 0; }
    if (typeof tz !== "string") { throw new TypeError("the time zone is not text"); }
    if (tz.length <= 1 || tz[0] === "+" || tz[0] === "-") { return zoneOffsetOf(tz); }
    if (tz.slice(0, 3) === "UTC" || tz.slice(0, 3) === "GMT") { return zonePrefixed(tz, 3); }
    if (tz.slice(0, 2) === "UT") { return zonePrefixed(tz, 2); }
    return zoneRegion(tz);
  }
  function offsetText(t) {
    if (t === undefined || /^[Zz]$|^GMT$|^UTC$/.test(t)) { return 0; }
    var m = /^([+-])(\d{2})(?::?(\d{2})(?::?(\d{2}))?)?$/.exec(t);
    if (!m) { return null; }
    var secs = Number(m[2]) * 3600 + Number(m[3] || 0) * 60 + Number(m[4] || 0);
    return m[1] === "-" ? -secs : secs;
  }
  function fraction(f) { return f ? Number((f + "00000000").slice(0, 9)) : 0; }
// TbDate(String): ISO_OFFSET_DATE_TIME, else TbDate.parse (the pattern
// "yyyy-MM-dd[[ ]['T']HH:mm[:ss[.SSS]][ ][XXX][Z]...]", no zone: the server's), when the text
// starts with a digit; else RFC_1123_DATE_TIME (no zone: the server's)
  function parseIso(s) {
    var m = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{0,9}))?)?([Zz]|[+-]\d{2}(?::\d{2}(?::\d{2})?)?)$/.exec(s);
    if (!m) { return null; }
    var off = offsetText(m[8]), n = fraction(m[7]);
    return new TbDate(epochOf(Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6] || 0), Math.floor(n / 1000000), off), n % 1000000);
  }
  function parseLenient(s) {
    var m = /^(\d{4})-(\d{2})-(\d{2}) ?T?(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{3}))?)? ?(Z|[+-]\d{2}:\d{2}|[+-]\d{4}|GMT|UTC)?$/.exec(s);
    if (!m) { return null; }
    try {
      return epochOf(Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6] || 0), Number(m[7] || 0), offsetText(m[8]));
    } catch (e) { return null; }
  }
  function parseRfc(s) {
    var m = /^(?:(Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?(\d{1,2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (\d{4}) (\d{2}):(\d{2})(?::(\d{2}))?(?: (GMT|[+-]\d{2}(?:\d{2}(?:\d{2})?)?))?$/i.exec(s.trim());
    if (!m) { return null; }
    var ms = epochOf(Number(m[4]), MON.indexOf(m[3].toLowerCase()) + 1, Number(m[2]), Number(m[5]), Number(m[6]), Number(m[7] || 0), 0, offsetText(m[8]));
    if (m[1] && DOW[(new Date(ms + offsetText(m[8]) * 1000).getUTCDay() + 6) % 7] !== m[1].toLowerCase()) { return null; }
    return ms;
  }
  function parseDate(s) {
    var d = null, ms;
    try {
      if (s.length > 0 && s[0] >= "0" && s[0] <= "9") {
        d = parseIso(s);
        if (d === null) { ms = parseLenient(s); d = ms === null ? null : new TbDate(ms, 0); }
      } else {
        ms = parseRfc(s);
        d = ms === null ? null : new TbDate(ms, 0);
      }
    } catch (e) { d = null; }
    if (d === null) { throw notParsed(s); }
    return d;
  }
  function wholeArg(name, v) {
    if (!(typeof v === "number" && v % 1 === 0)) { throw new TypeError(name + ": " + text(v) + " is not a whole number"); }
    return v;
  }
// new Date(), new Date(ms), new Date(text), new Date(year, month, date[, hrs, min[, sec[, ms]]][, tz])
// (a year below 70 is 20yy, below 100 19yy: TbDate.parseInstant)
  function newDate() {
    var a = Array.prototype.slice.call(arguments), n = a.length, tz = null;
    if (n === 0) { return new TbDate(Date.now(), 0); }
    if (n === 1) {
      if (typeof a[0] === "string") { return parseDate(a[0]); }
      return new TbDate(wholeArg("new Date()", a[0]), 0);
    }
    if (typeof a[0] === "string") { throw new TypeError("new Date(text, pattern...) is not supported here (see docs/rules-scripts.md)"); }
    if (n > 3 && typeof a[n - 1] === "string") { tz = a.pop(); n--; }
    if (n !== 3 && n !== 5 && n !== 6 && n !== 7) { throw new TypeError("unable to resolve constructor: new Date() with " + arguments.length + " arguments"); }
    a.forEach(function (v) { wholeArg("new Date()", v); });
    var zone = zoneOf(tz), y = a[0] < 70 ? 2000 + a[0] : a[0] <= 99 ? 1900 + a[0] : a[0];
    // (milliseconds * 1000000 is Java's int product: it wraps past 2^31)
    var at = zoned(y, a[1], a[2], a[3] || 0, a[4] || 0, a[5] || 0, Math.imul(a[6] || 0, 1000000), zone);
    return new TbDate(at[0], at[1]);
  }
  newDate.prototype = TbDate.prototype;
  __TbelDate = TbDate;
  __tbelNewDate = newDate;
  Object.defineProperty(TbDate.prototype, "toJSON", {value: function () {
    throw new TypeError("a Date in the script's value: ThingsBoard writes its localized text, which is not made here; give toISOString() or getTime() (see docs/rules-scripts.md)");
  }});
  function civil(d) {
    var t = new Date(d[MS]);
    return {y: t.getUTCFullYear(), m: t.getUTCMonth() + 1, d: t.getUTCDate(), h: t.getUTCHours(), mi: t.getUTCMinutes(),
      s: t.getUTCSeconds(), ms: t.getUTCMilliseconds(), dow: (t.getUTCDay() + 6) % 7 + 1};
  }
  function pad(v, n) { var s = String(Math.abs(v)); while (s.length < n) { s = "0" + s; } return (v < 0 ? "-" : "") + s; }
// Instant.toString (ISO_INSTANT): the fraction in 3, 6 or 9 digits, none when zero
  function isoText(d) {
    var c = civil(d), nanos = c.ms * 1000000 + d[NS], f = "";
    if (nanos !== 0) {
      f = "." + pad(nanos, 9);
      f = nanos % 1000000 === 0 ? f.slice(0, 4) : nanos % 1000 === 0 ? f.slice(0, 7) : f;
    }
    var y = c.y > 9999 ? "+" + c.y : pad(c.y, 4);
    return y + "-" + pad(c.m, 2) + "-" + pad(c.d, 2) + "T" + pad(c.h, 2) + ":" + pad(c.mi, 2) + ":" + pad(c.s, 2) + f + "Z";
  }
// ZonedDateTime.plusYears / plusMonths (the day kept, else the month's last), plusWeeks ...
  function plusMonths(d, months) {
    var c = civil(d), total = c.y * 12 + (c.m - 1) + months, y = Math.floor(total / 12), m = total - y * 12 + 1;
    d[MS] = epochOf(y, m, Math.min(c.d, monthDays(y, m)), c.h, c.mi, c.s, c.ms, 0);
    return null;
  }
  function plusMs(d, ms) { d[MS] += ms; return null; }
  var DATE_GETTERS = {FullYear: "y", Month: "m", Date: "d", Day: "dow", Hours: "h", Minutes: "mi", Seconds: "s", Milliseconds: "ms"};
  Object.keys(DATE_GETTERS).forEach(function (k) {
    var f = function () { return civil(this)[DATE_GETTERS[k]]; };
    define("get" + k, {date: f});
    define("getUTC" + k, {date: f});
  });
  define("getTime", {date: function () { return this[MS]; }});
  define("valueOf", {date: function () { return this[MS]; }});
  define("parseSecondMilli", {date: function () { return this[MS]; }});
  define("parseSecond", {date: function () { return Math.floor(this[MS] / 1000); }});
  define("toISOString", {date: function () { return isoText(this); }});
  define("toJSON", {date: function () { return isoText(this); }});
  define("setTime", {date: function (ms) { this[MS] = wholeArg("setTime()", ms); this[NS] = 0; return null; }});
// TbDate's setters. The server's zone is UTC: setHours and setUTCHours (and so on) agree, but
// setUTCMinutes(min, sec, ms), which TbDate makes anew with parseInstant (a year below 70 becomes
// 20yy, below 100 19yy). Each is LocalDateTime's withYear / withMonth / withDayOfMonth /
// withHour / withMinute / withSecond / withNano, in that order, with Java's checks
// (DateTimeException: "Invalid value for HourOfDay (valid values 0 - 23): 24", "Invalid date
// 'FEBRUARY 30'"); a millisecond argument is nanoseconds (ms * 1000000 as Java's int product,
// which wraps past 2^31). Given the year or month but not the day, a day past the 28th is
// counted from the 1st of the new month (TbDate's own rule: January 31 with month 2 is March 3
// or 2), to the millisecond (Instant.ofEpochMilli); otherwise the nanoseconds not set are kept.
  function intArg(name, v) {
    wholeArg(name, v);
    if (v < -2147483648 || v > 2147483647) { throw new TypeError(name + ": " + v + " is not an int"); }
    return v;
  }
  function setAt(d, at) { d[MS] = at[0]; d[NS] = at[1]; return null; }
  function nanoOf(d, c) { return c.ms * 1000000 + d[NS]; }
  function setYearMonth(d, name, y, m) {
    var c = civil(d);
    y = y === undefined ? c.y : intArg(name, y);
    m = m === undefined ? c.m : intArg(name, m);
    field("Year", y, -999999999, 999999999);
    field("MonthOfYear", m, 1, 12);
    if (c.d > 28) {
      d[MS] = checkedMs(zoned(y, m, 1, c.h, c.mi, c.s, nanoOf(d, c), 0)[0] + (c.d - 1) * 86400000);
      d[NS] = 0;
      return null;
    }
    return setAt(d, zoned(y, m, c.d, c.h, c.mi, c.s, nanoOf(d, c), 0));
  }
  function setDay(d, name, y, m, day) {
    var c = civil(d);
    return setAt(d, zoned(y === undefined ? c.y : intArg(name, y), m === undefined ? c.m : intArg(name, m), intArg(name, day), c.h, c.mi, c.s, nanoOf(d, c), 0));
  }
  function setTimeOfDay(d, name, h, mi, s, ms) {
    var c = civil(d);
    return setAt(d, zoned(c.y, c.m, c.d, h === undefined ? c.h : intArg(name, h), mi === undefined ? c.mi : intArg(name, mi),
      s === undefined ? c.s : intArg(name, s), ms === undefined ? nanoOf(d, c) : Math.imul(intArg(name, ms), 1000000), 0));
  }
  ["", "UTC"].forEach(function (utc) {
    var n = function (what) { return "set" + utc + what + "()"; };
    define("set" + utc + "FullYear", {date: opt(1, 3, function (y, m, day) {
      if (arguments.length === 3) { return setDay(this, n("FullYear"), y, m, day); }
      return setYearMonth(this, n("FullYear"), intArg(n("FullYear"), y), m);
    })});
    define("set" + utc + "Month", {date: opt(1, 2, function (m, day) {
      if (arguments.length === 2) { return setDay(this, n("Month"), undefined, m, day); }
      return setYearMonth(this, n("Month"), undefined, intArg(n("Month"), m));
    })});
    define("set" + utc + "Date", {date: function (day) { return setDay(this, n("Date"), undefined, undefined, day); }});
    define("set" + utc + "Hours", {date: opt(1, 4, function (h, mi, s, ms) { return setTimeOfDay(this, n("Hours"), h, mi, s, ms); })});
    define("set" + utc + "Minutes", {date: opt(1, 3, function (mi, s, ms) {
      if (utc && arguments.length === 3) {
        var c = civil(this), y = c.y < 70 ? 2000 + c.y : c.y <= 99 ? 1900 + c.y : c.y;
        return setAt(this, zoned(y, c.m, c.d, c.h, intArg(n("Minutes"), mi), intArg(n("Minutes"), s), Math.imul(intArg(n("Minutes"), ms), 1000000), 0));
      }
      return setTimeOfDay(this, n("Minutes"), undefined, mi, s, ms);
    })});
    define("set" + utc + "Seconds", {date: opt(1, 2, function (s, ms) { return setTimeOfDay(this, n("Seconds"), undefined, undefined, s, ms); })});
    define("set" + utc + "Milliseconds", {date: function (ms) { return setTimeOfDay(this, n("Milliseconds"), undefined, undefined, undefined, ms); }});
  });
  define("addYears", {date: function (n) { return plusMonths(this, 12 * wholeArg("addYears()", n)); }});
  define("addMonths", {date: function (n) { return plusMonths(this, wholeArg("addMonths()", n)); }});
  define("addWeeks", {date: function (n) { return plusMs(this, 604800000 * wholeArg("addWeeks()", n)); }});
  define("addDays", {date: function (n) { return plusMs(this, 86400000 * wholeArg("addDays()", n)); }});
  define("addHours", {date: function (n) { return plusMs(this, 3600000 * wholeArg("addHours()", n)); }});
  define("addMinutes", {date: function (n) { return plusMs(this, 60000 * wholeArg("addMinutes()", n)); }});
  define("addSeconds", {date: function (n) { return plusMs(this, 1000 * wholeArg("addSeconds()", n)); }});
  define("addNanos", {date: function (n) {
    var total = this[NS] + wholeArg("addNanos()", n), carry = Math.floor(total / 1000000);
    this[NS] = total - carry * 1000000;
    this[MS] += carry;
    return null;
  }});
// TbDate.now(), UTC(year[, month[, date[, hrs[, min[, sec[, ms]]]]]]) (0 for year, month or date
// is 1899, 12, 31), parse(text) (TbDate.parse: -1 when the text does not read)
  __tbelDateStatics = {
    now: function () { return Date.now(); },
    UTC: function (year, month, date, hrs, min, sec, ms) {
      var a = [year, month || 0, date || 0, hrs || 0, min || 0, sec || 0, ms || 0].map(function (v) { return wholeArg("Date.UTC()", v); });
      var y = a[0] === 0 ? 1899 : a[0];
      y = y < 70 ? 2000 + y : y <= 99 ? 1900 + y : y;
      return zoned(y, a[1] === 0 ? 12 : a[1], a[2] === 0 ? 31 : a[2], a[3], a[4], a[5], Math.imul(a[6], 1000000), 0)[0];
    },
    parse: function (s) {
      if (arguments.length > 1) { throw new TypeError("Date.parse(text, format) is not supported here (see docs/rules-scripts.md)"); }
      if (typeof s !== "string") { throw new TypeError("Date.parse(): the argument is not text"); }
      var ms = parseLenient(s);
      return ms === null ? -1 : ms;
    }
  };
// a Date's methods: its own symbol-keyed properties, ahead of Object.prototype's, so that the
// dispatch of every other value (kind) has no Date to test for; a method a Date has not is
// an error, as on any value of another kind
  Object.keys(__tbelS).forEach(function (name) {
    var impl = M[name], f = impl.date;
    var allowed = Object.keys(impl).map(function (k) { return KINDS[k]; }).join(" or ");
    Object.defineProperty(TbDate.prototype, __tbelS[name], {configurable: true, writable: true, enumerable: false,
      value: function () {
        var n = arguments.length;
        if (f === undefined) { throw new TypeError(name + "(): a Date is not " + allowed); }
        if (n < f.min || n > f.max) {
          throw new TypeError("unable to resolve method: " + name + "() with " + n + " argument" + (n === 1 ? "" : "s") + " on a Date");
        }
        return f.apply(this, arguments);
      }});
  });
// MVEL reads d.time as d.getTime() (its getter rule: getTime for a property time; and so
// d.fullYear, d.UTCHours, ...), and d.time = x is d.setTime(x) (its setter rule: the method set
// and the property's name of one parameter; and so d.hours = x is d.setHours(x), d.fullYear = x
// d.setFullYear(x), ...; d.day has no setter)
  Object.keys(__tbelS).forEach(function (name) {
    if (!/^get[A-Z]/.test(name) || !M[name].date) { return; }
    var get = function () { return this[__tbelS[name]](); }, set;
    var setter = "set" + name.slice(3);
    if (M[setter] && M[setter].date) { set = function (v) { this[__tbelS[setter]](v); }; }
    [name[3].toLowerCase() + name.slice(4), name.slice(3)].forEach(function (prop) {
      Object.defineProperty(TbDate.prototype, prop, {configurable: true, enumerable: false, get: get, set: set});
    });
  });
// a Date in a concatenation or String(d): TbDate.toString is localized text, which is not made
// here (the error of d.toString()); as a number (d1 < d2) NaN, so that a comparison is false, as
// MVEL's of two objects that are not Comparable (MathProcessor.doOperationNonNumeric)
  function noText() { return text(this); }
  Object.defineProperty(TbDate.prototype, "toString", {configurable: true, writable: true, enumerable: false, value: noText});
  Object.defineProperty(TbDate.prototype, Symbol.toPrimitive, {configurable: true, enumerable: false,
    value: function (hint) { return hint === "number" ? NaN : text(this); }});
// MVEL's ForEachNode: a list (Iterable; ArrayList's iterator throws
// ConcurrentModificationException when the list changes size meanwhile), text (its chars),
// an integer n (1 to n, counted as it goes: for (i = 1; i != n + 1; i++), so a negative n runs
// until the int wraps, as in Java), a map (its entries)
  __tbelIter = function (c) {
    if (Array.isArray(c)) {
      return (function* () {
        var n = c.length, i = 0;
        while (i !== c.length) {
          if (c.length !== n) { throw new Error("ConcurrentModificationException: the list changed while foreach ran over it"); }
          yield c[i++];
        }
      })();
    }
    if (typeof c === "string") { return c.split(""); }
    if (typeof c === "number" && c % 1 === 0 && c >= -2147483648 && c <= 2147483647) {
      return (function* () {
        for (var i = 1, max = (c + 1) | 0; i !== max; i = (i + 1) | 0) { yield i; }
      })();
    }
    if (kind(c) === "map") { return M.entrySet.map.call(c); }
    throw new TypeError("foreach: non-iterable type: " + (c === null ? "null" : text(c)));
  };
})();

var __tbelH = (function () {
  "use strict";
  var B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", own = Object.prototype.hasOwnProperty;
  function nfe(message) { var e = new Error(message); e.name = "NumberFormatException"; return e; }
  function iae(message) { var e = new Error(message); e.name = "IllegalArgumentException"; return e; }
  function aText(name, s) {
    if (typeof s !== "string") { throw new TypeError(name + "(): the argument is not text"); }
    return s;
  }
  function isWhole(x) { return typeof x === "number" && x % 1 === 0; }
// ByteBuffer.allocate(size).position(bigEndian ? size - length : 0).put(data, offset, length), as
// TbUtils.parseBytesToInt/Long do after their checks: Buffer.position's IllegalArgumentException,
// then put's IndexOutOfBoundsException (Objects.checkFromIndexSize)
  function byteBufferPut(size, offset, length, n, bigEndian) {
    if (bigEndian && size - length > size) { throw iae("newPosition > limit: (" + (size - length) + " > " + size + ")"); }
    if (offset < 0 || length < 0 || offset + length > n) {
      var e = new RangeError("Range [" + offset + ", " + offset + " + " + length + ") out of bounds for length " + n);
      e.name = "IndexOutOfBoundsException";
      throw e;
    }
  }
// a call with an argument count MVEL finds no overload for is an error (never an argument dropped)
  function arity(name, min, max, f) {
    return function () {
      var n = arguments.length;
      if (n < min || n > max) {
        throw new TypeError("unable to resolve method: " + name + "() with " + n + " argument" + (n === 1 ? "" : "s"));
      }
      return f.apply(null, arguments);
    };
  }
// String.getBytes in UTF-8 (ThingsBoard's default charset): an unpaired surrogate is "?"
  function utf8(s) {
    var out = [], i, c, d;
    for (i = 0; i < s.length; i++) {
      c = s.charCodeAt(i);
      if (c >= 0xD800 && c <= 0xDBFF && i + 1 < s.length && (d = s.charCodeAt(i + 1)) >= 0xDC00 && d <= 0xDFFF) {
        c = 0x10000 + ((c - 0xD800) << 10) + (d - 0xDC00);
        i++;
      } else if (c >= 0xD800 && c <= 0xDFFF) {
        c = 0x3F;
      }
      if (c < 0x80) { out.push(c); }
      else if (c < 0x800) { out.push(0xC0 | c >> 6, 0x80 | c & 63); }
      else if (c < 0x10000) { out.push(0xE0 | c >> 12, 0x80 | c >> 6 & 63, 0x80 | c & 63); }
      else { out.push(0xF0 | c >> 18, 0x80 | c >> 12 & 63, 0x80 | c >> 6 & 63, 0x80 | c & 63); }
    }
    return out;
  }
// new String(bytes, UTF-8): each malformed sequence is U+FFFD
  function fromUtf8(b) {
    var out = "", i = 0, n = b.length, c, need, cp, lo, hi, k;
    while (i < n) {
      c = b[i] & 255;
      if (c < 0x80) { out += String.fromCharCode(c); i++; continue; }
      if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 31; }
      else if (c >= 0xE0 && c <= 0xEF) { need = 2; cp = c & 15; }
      else if (c >= 0xF0 && c <= 0xF4) { need = 3; cp = c & 7; }
      else { out += "\uFFFD"; i++; continue; }
      lo = 0x80; hi = 0xBF;
      if (c === 0xE0) { lo = 0xA0; } else if (c === 0xED) { hi = 0x9F; }
      else if (c === 0xF0) { lo = 0x90; } else if (c === 0xF4) { hi = 0x8F; }
      for (k = 1; k <= need; k++) {
        if (i + k >= n) { break; }
        var t = b[i + k] & 255;
        if (t < lo || t > hi) { break; }
        lo = 0x80; hi = 0xBF;
        cp = cp << 6 | t & 63;
      }
      if (k <= need) { out += "\uFFFD"; i += k; continue; }
      out += String.fromCodePoint(cp);
      i += need + 1;
    }
    return out;
  }
// the charsets a script may name: UTF-8, ISO-8859-1, US-ASCII (unmappable characters "?")
  function charset(name) {
    var n = aText("charset", name).toUpperCase().replace(/[-_]/g, "");
    if (n === "UTF8") { return "utf8"; }
    if (n === "ISO88591" || n === "LATIN1" || n === "ISO8859_1" || n === "L1") { return "latin1"; }
    if (n === "USASCII" || n === "ASCII") { return "ascii"; }
    throw new TypeError("charset " + JSON.stringify(name) + " is not supported here (UTF-8, ISO-8859-1, US-ASCII)");
  }
  function encode(s, cs) {
    if (cs === "utf8") { return utf8(s); }
    var max = cs === "latin1" ? 255 : 127, out = [], i, c;
    for (i = 0; i < s.length; i++) {
      c = s.charCodeAt(i);
      if (c >= 0xD800 && c <= 0xDBFF && i + 1 < s.length && s.charCodeAt(i + 1) >= 0xDC00 && s.charCodeAt(i + 1) <= 0xDFFF) { i++; c = 0x3F; }
      out.push(c <= max ? c : 0x3F);
    }
    return out;
  }
  function decode(bytes, cs) {
    if (cs === "utf8") { return fromUtf8(bytes); }
    var out = "", i, c;
    for (i = 0; i < bytes.length; i++) {
      c = bytes[i] & 255;
      out += cs === "ascii" && c > 127 ? "\uFFFD" : String.fromCharCode(c);
    }
    return out;
  }
  function signed(bytes) {
    var out = bytes.map(function (b) { return b > 127 ? b - 256 : b; });
    __tbelBytes.add(out);
    return out;
  }
// java.util.Base64 basic encoder / decoder (decode0: its errors)
  function toBase64(bytes) {
    var out = "", i, n;
    for (i = 0; i < bytes.length; i += 3) {
      n = (bytes[i] & 255) << 16 | (i + 1 < bytes.length ? (bytes[i + 1] & 255) << 8 : 0) | (i + 2 < bytes.length ? bytes[i + 2] & 255 : 0);
      out += B64[n >> 18 & 63] + B64[n >> 12 & 63] + (i + 1 < bytes.length ? B64[n >> 6 & 63] : "=") + (i + 2 < bytes.length ? B64[n & 63] : "=");
    }
    return out;
  }
  function fromBase64(s) {
    var out = [], bits = 0, n = 0, i, c, v, end = s.length;
    for (i = 0; i < s.length; i++) {
      c = s[i];
      if (c === "=") { end = i; break; }
      v = B64.indexOf(c);
      if (v < 0) { throw iae("Illegal base64 character " + s.charCodeAt(i).toString(16)); }
      bits = bits << 6 | v;
      n += 6;
      if (n >= 8) { n -= 8; out.push(bits >> n & 255); bits &= (1 << n) - 1; }
    }
    var units = end % 4, sp = s.length;
    if (end < s.length) {
      sp = end + 1;
      if (units === 0) { throw iae("Input byte array has wrong 4-byte ending unit"); }
      if (units === 2) {
        if (sp === s.length || s[sp] !== "=") { throw iae("Input byte array has wrong 4-byte ending unit"); }
        sp++;
      }
    }
    if (units === 1) { throw iae("Last unit does not have enough valid bits"); }
    if (sp < s.length) { throw iae("Input byte array has incorrect ending byte at " + sp); }
    return out;
  }
// Integer.parseInt(s, radix): NumberFormatException.forInputString
  function javaParseInt(s, radix, bits) {
    var max = bits === 32 ? 2147483647 : 9007199254740991, i = 0, neg = false, v = 0, d, c;
    if (s.length === 0) { throw nfe("For input string: \"\"" + (radix === 10 ? "" : " under radix " + radix)); }
    if (s[0] === "-" || s[0] === "+") { neg = s[0] === "-"; i = 1; if (s.length === 1) { throw nfe("For input string: \"" + s + "\"" + (radix === 10 ? "" : " under radix " + radix)); } }
    for (; i < s.length; i++) {
      c = s[i].toLowerCase();
      d = c >= "0" && c <= "9" ? c.charCodeAt(0) - 48 : c >= "a" && c <= "z" ? c.charCodeAt(0) - 87 : 99;
      if (d >= radix) { throw nfe("For input string: \"" + s + "\"" + (radix === 10 ? "" : " under radix " + radix)); }
      v = v * radix + d;
      if (v > max + (neg ? 1 : 0)) { throw nfe("For input string: \"" + s + "\"" + (radix === 10 ? "" : " under radix " + radix)); }
    }
    return neg ? (v === 0 ? 0 : -v) : v;
  }
// TbUtils.prepareNumberString, reverseHexStringByOrder, isBinary/isOctal/isDecimal/
// isHexadecimal, getRadix10_16, isValidStringAndRadix, parseInt(String, int, boolean)
  function prepareNumberString(value, bigEndian) {
    if (value === null || value === undefined || aText("parse", value).trim() === "") { return null; }
    value = value.trim().split("0x").join("").split("0X").join("").split(",").join(".");
    return bigEndian ? value : reverseHex(value);
  }
  function reverseHex(value) {
    if (value.startsWith("-")) { throw iae("The hexadecimal string must be without a negative sign."); }
    var pref = value.startsWith("0x"), hex = pref ? value.slice(2) : value, out = "", i;
    if (hex.length % 2 > 0) { throw iae("The hexadecimal string must be even-length."); }
    for (i = hex.length - 2; i >= 0; i -= 2) { out += hex.slice(i, i + 2); }
    return pref ? "0x" + out : out;
  }
  function isBinary(s) { return s !== null && /^[01]+$/.test(s) ? 2 : -1; }
  function isOctal(s) { return s !== null && /^[0-7]+$/.test(s) ? 8 : -1; }
  function isDecimal(s) { return s !== null && /^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$/.test(s) ? 10 : -1; }
  function isHexadecimal(s) { return s !== null && /^-?(0[xX])?[0-9a-fA-F]+$/.test(s) ? 16 : -1; }
  function radix1016(value) {
    var r = isDecimal(value) > 0 ? 10 : isHexadecimal(value);
    if (r > 0) { return r; }
    throw nfe("Value: \"" + value + "\" is not numeric or hexDecimal format!");
  }
  function validRadix(valueP, radix, value) {
    var r;
    if (radix === 0) { r = radix1016(valueP); }
    else if (radix >= 25 && radix <= 36) { return radix; }
    else if (radix === 2) { r = isBinary(valueP); }
    else if (radix === 8) { r = isOctal(valueP); }
    else if (radix === 10) { r = isDecimal(valueP); }
    else if (radix === 16) { r = isHexadecimal(valueP); }
    else { throw iae("Invalid radix: [" + radix + "]"); }
    if (r > 0) {
      if (value.startsWith("0x")) { r = 16; }
      if (r === 16) {
        var digits = value.startsWith("-") ? value.slice(1) : value;
        if (digits.length % 2 > 0) {
          throw nfe("The hexadecimal value: \"" + value + "\" must be of even length, or if the decimal value must be a number!");
        }
      }
      return r;
    }
    if (radix > 0) { throw nfe("Failed radix [" + radix + "] for value: \"" + value + "\", must be [" + r + "] !"); }
    throw nfe("Invalid \"" + value + "\". It is not numeric or hexadecimal format!");
  }
  function parseInt32(value, radix, bigEndian) {
    var valueP = prepareNumberString(value, bigEndian);
    if (valueP === null) { return null; }
    var r = validRadix(valueP, radix, value);
    if (r === 2) {
      var bin = valueP.length !== 32 ? valueP.padStart(32, "0") : valueP;
      if (bin[0] === "1") {
        var inv = bin.replace(/[01]/g, function (b) { return b === "0" ? "1" : "0"; });
        return -(javaParseInt(inv, 2, 32) + 1) | 0;
      }
      return javaParseInt(bin, 2, 32);
    }
    return javaParseInt(valueP, r, 32);
  }
// a Java float as Jackson writes it (Float.toString: the shortest digits that read back as
// the same float), held as a double
  function float32(x) {
    var f = Math.fround(x), p, s;
    if (f !== f || f === Infinity || f === -Infinity || f === 0) { return f; }
    for (p = 1; p <= 9; p++) {
      s = f.toPrecision(p);
      if (Math.fround(Number(s)) === f) { return Number(s); }
    }
    return f;
  }
// Float.parseFloat / Double.parseDouble of decimal text
  function javaTrim(s) {
    var a = 0, b = s.length;
    while (a < b && s.charCodeAt(a) <= 32) { a++; }
    while (b > a && s.charCodeAt(b - 1) <= 32) { b--; }
    return s.slice(a, b);
  }
  function javaFloatText(s) {
    var t = javaTrim(s);
    if (t === "") { throw nfe("empty String"); }
    if (!/^[+-]?(NaN|Infinity|((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)[fFdD]?)$/.test(t)) { throw nfe("For input string: \"" + s + "\""); }
    return Number(t.replace(/[fFdD]$/, ""));
  }
// BigDecimal.valueOf(double).setScale(scale, RoundingMode.HALF_UP).doubleValue()
  function halfUp(value, scale) {
    if (typeof value !== "number") { throw new TypeError("the value is not a number"); }
    if (value !== value || value === Infinity || value === -Infinity) { throw nfe("Infinite or NaN"); }
    var neg = value < 0, e = Math.abs(value).toExponential(), at = e.indexOf("e");
    var digits = e.slice(0, at).replace(".", ""), exp = Number(e.slice(at + 1));
    var keep = exp + 1 + scale;
    if (keep >= digits.length) { return value; }
    var kept = keep > 0 ? digits.slice(0, keep) : "0", up = keep >= 0 && digits.charCodeAt(keep) >= 53;
    var n = keep > 0 ? BigInt(kept) : 0n;
    if (up) { n = n + 1n; }
    var text = n.toString() + "e" + (-scale);
    var out = Number(text);
    return neg ? -out : out;
  }
// TbUtils.bytesFromList / isValidIntegerToByte (-128..255; text through parseInt)
  function byteOf(name, v) {
    if (isWhole(v)) {
      if (v > 255 || v < -128) { throw nfe("The value '" + v + "' could not be correctly converted to a byte. Integer to byte conversion requires the use of only 8 bits (with a range of min/max = -128/255)!"); }
      return v & 255;
    }
    if (typeof v === "string") { return byteOf(name, parseInt32(v, 0, true)); }
    throw nfe("The value '" + v + "' could not be correctly converted to a byte. Must be a HexDecimal/String/Integer/Byte format !");
  }
  function bytesFromList(name, list) {
    if (!Array.isArray(list)) { throw new TypeError(name + "(): the argument is not a list"); }
    return list.map(function (v) { return byteOf(name, v); });
  }
// Guava Bytes.toArray: Number.byteValue
// Java's ClassCastException of a value (its class as MVEL has it: a whole number an Integer, or a
// Long past int, else a Double) cast to the class "to"
  function classCast(v, to) {
    var cls = typeof v === "string" ? "java.lang.String" : typeof v === "boolean" ? "java.lang.Boolean"
      : typeof v !== "number" ? (Array.isArray(v) ? "java.util.ArrayList" : "java.util.LinkedHashMap")
      : v % 1 !== 0 ? "java.lang.Double" : Math.abs(v) <= 2147483647 ? "java.lang.Integer" : "java.lang.Long";
    var e = new TypeError("class " + cls + " cannot be cast to class " + to);
    e.name = "ClassCastException";
    return e;
  }
  function numberByte(v) {
    if (typeof v !== "number") { throw new TypeError("the list holds " + JSON.stringify(v) + ", not a number"); }
    var t = Math.trunc(v);
    t = t !== t ? 0 : Math.max(-2147483648, Math.min(2147483647, t));
    return t & 255;
  }
// TbUtils.validateAndPrepareHex, hexToBytes(String); bytesToHex(byte[])
  function hexToBytes(value) {
    var hex = prepareNumberString(value, true);
    if (hex === null) { throw iae("Hex string must be not empty!"); }
    if (hex.length % 2 > 0) { throw iae("Hex string must be even-length."); }
    if (isHexadecimal(value) !== 16) { throw nfe("Value: \"" + value + "\" is not numeric or hexDecimal format!"); }
    return rawHexToBytes(hex);
  }
  function rawHexToBytes(hex) {
    var out = [], i;
    for (i = 0; i < hex.length; i += 2) {
      if (i + 2 > hex.length) { throw new RangeError("begin " + i + ", end " + (i + 2) + ", length " + hex.length); }
      out.push(javaParseInt(hex.slice(i, i + 2), 16, 32) & 255);
    }
    return out;
  }
  function hexOf(bytes) {
    return bytes.map(function (b) { return "0123456789ABCDEF"[(b & 255) >> 4] + "0123456789ABCDEF"[b & 15]; }).join("");
  }
// TbUtils.encodeURI / decodeURI: URLEncoder / URLDecoder (UTF-8) and mdnEncodingReplacements
  var FORM_SAFE = /[A-Za-z0-9.\-*_]/;
  var URI_REPLACE = [["+", "%20"], ["%21", "!"], ["%27", "'"], ["%28", "("], ["%29", ")"], ["%7E", "~"],
    ["%3B", ";"], ["%2C", ","], ["%2F", "/"], ["%3F", "?"], ["%3A", ":"], ["%40", "@"], ["%26", "&"],
    ["%3D", "="], ["%2B", "+"], ["%24", "$"], ["%23", "#"]];
  function listBytes(name, data) {
    if (!Array.isArray(data)) { throw new TypeError(name + "(): the argument is not a list"); }
    return data.map(numberByte);
  }
  function hexFloat(value, bigEndian) {
    var valueP = prepareNumberString(value, bigEndian);
    if (valueP === null) { return null; }
    validRadix(valueP, 16, value);
    var dv = new DataView(new ArrayBuffer(4));
    dv.setUint32(0, Number(BigInt.asUintN(32, hexBig(valueP))));
    return float32(dv.getFloat32(0));
  }
  function numberHex(number, bigEndian, pref, len, hexLenMax) {
    var hex = BigInt.asUintN(64, number).toString(16).toUpperCase(), out;
    if (hexLenMax < 0) { hexLenMax = hex.length; }
    out = hex.replace(/^0+(?!$)/, "");
    if (out.length % 2 > 0) { out = "0" + out; }
    if (number < 0n) {
      out = out.replace(/^F+(?!$)/, "");
      if (out.length % 2 > 0) { out = "F" + out; }
      if (out.length > hexLenMax) { out = out.slice(out.length - hexLenMax); }
      else if (out.length < hexLenMax) { out = "FF" + out; }
    }
    if (!bigEndian) { out = reverseHex(out); }
    len = len === -1 ? out.length : len;
    if (!isWhole(len) || len < 0 || len > out.length) {
      throw new RangeError("begin " + (out.length - len) + ", end " + out.length + ", length " + out.length);
    }
    out = out.slice(out.length - len);
    return pref ? "0x" + out : out;
  }
  function hexBig(v) { return v[0] === "-" ? -BigInt("0x" + v.slice(1)) : BigInt("0x" + v); }
  function flag(name, b) {
    if (typeof b !== "boolean") { throw new TypeError(name + "(): bigEndian is not true or false"); }
    return b;
  }
  function replaceAll(s, a, b) { return s.split(a).join(b); }
// java.lang.Integer / Long / Double / String / Boolean static methods a script may call:
// Integer.parseInt(s[, radix]) and valueOf, toString(i[, radix]) (a radix outside 2..36 is 10),
// toHexString (the unsigned 32 bits); Long.parseLong(s[, radix]) and valueOf (exact only up to
// 2^53 here: beyond, an error); Double.parseDouble(s) and valueOf; String.valueOf(x) (Java's
// text); Boolean.parseBoolean(s) ("true" in any case)
  function radixOf(name, args) {
    if (args.length < 2) { return 10; }
    var r = args[1];
    if (!isWhole(r)) { throw new TypeError(name + "(): the radix is not a whole number"); }
    if (r < 2) { throw nfe("radix " + r + " less than Character.MIN_RADIX"); }
    if (r > 36) { throw nfe("radix " + r + " greater than Character.MAX_RADIX"); }
    return r;
  }
  function nonNull(s) {
    if (s === null || s === undefined) { throw nfe("Cannot parse null string: null"); }
    return aText("parse", s);
  }
// Long.parseLong(s, radix) as a BigInt (its NumberFormatException); javaLong: as a number, exact
// only up to 2^53 here (beyond, an error)
  function javaLongBig(s, radix) {
    var under = radix === 10 ? "" : " under radix " + radix, i = 0, neg = false, v = 0n, d, c;
    if (s.length === 0) { throw nfe("For input string: \"\"" + under); }
    if (s[0] === "-" || s[0] === "+") { neg = s[0] === "-"; i = 1; }
    if (i === s.length) { throw nfe("For input string: \"" + s + "\"" + under); }
    for (; i < s.length; i++) {
      c = s[i].toLowerCase();
      d = c >= "0" && c <= "9" ? c.charCodeAt(0) - 48 : c >= "a" && c <= "z" ? c.charCodeAt(0) - 87 : 99;
      if (d >= radix) { throw nfe("For input string: \"" + s + "\"" + under); }
      v = v * BigInt(radix) + BigInt(d);
    }
    if (neg) { v = -v; }
    if (v > 9223372036854775807n || v < -9223372036854775808n) { throw nfe("For input string: \"" + s + "\"" + under); }
    return v;
  }
  function javaLong(s, radix) {
    var v = javaLongBig(s, radix);
    if (v > 9007199254740991n || v < -9007199254740991n) {
      throw new RangeError("Long.parseLong(\"" + s + "\"): beyond 2^53, not exact as a number here");
    }
    return Number(v);
  }
// a Java long given back as a number: exact up to 2^53 only, beyond it an error
  function exactLong(name, v) {
    if (v > 9007199254740991n || v < -9007199254740991n) {
      throw new RangeError(name + "(): " + v + " is beyond 2^53, not exact as a number here");
    }
    return Number(v);
  }
// a script's number as a Java long (a whole number; exact up to 2^53 as every number here)
  function longArg(name, v) {
    if (!isWhole(v)) { throw new TypeError(name + "(): " + v + " is not a whole number"); }
    return BigInt(v);
  }
// TbUtils.parseLong(String, int, boolean): compareIntLongValueMinMax for radix 25..36,
// parseBinaryStringAsSignedLong (64-bit two's complement), Long.parseLong for 8, 10, 16
  function parseLong64(value, radix, bigEndian) {
    var valueP = prepareNumberString(value, bigEndian), r, bin, big;
    if (valueP === null) { return null; }
    r = validRadix(valueP, radix, value);
    if (r >= 25 && r <= 36) {
      try { return javaLongBig(valueP, r); } catch (e) {
        var digits = valueP.replace(/^[-+]/, ""), i, d;
        big = 0n;
        for (i = 0; i < digits.length; i++) {
          d = parseInt(digits[i], 36);
          if (!(d < r)) { throw e; }
          big = big * BigInt(r) + BigInt(d);
        }
        if (valueP[0] === "-") { big = -big; }
        if (big > 9223372036854775807n) { throw nfe("Value \"" + valueP + "\"is greater than the maximum Long value 9223372036854775807 !"); }
        if (big < -9223372036854775808n) { throw nfe("Value \"" + valueP + "\" is  less than the minimum Long value -9223372036854775808 !"); }
        throw e;
      }
    }
    if (r === 2) {
      bin = valueP.length !== 64 ? valueP.padStart(64, "0") : valueP;
      if (bin[0] === "1") {
        var inv = bin.replace(/[01]/g, function (b) { return b === "0" ? "1" : "0"; });
        return BigInt.asIntN(64, -BigInt.asIntN(64, javaLongBig(inv, 2) + 1n));
      }
      return javaLongBig(bin, 2);
    }
    return javaLongBig(valueP, r);
  }
// Long.parseUnsignedLong(hex, 16) then Double.longBitsToDouble (TbUtils.parseDouble's hex form)
  function hexDouble(valueP) {
    if (valueP[0] === "-") { throw nfe("Illegal leading minus sign on unsigned string " + valueP + "."); }
    var bits = hexBig(valueP);
    if (bits > 0xFFFFFFFFFFFFFFFFn) { throw nfe("String value " + valueP + " exceeds range of unsigned long."); }
    var dv = new DataView(new ArrayBuffer(8));
    dv.setBigUint64(0, bits);
    return dv.getFloat64(0);
  }
// TbUtils.validationNumberByLength (and validateLength's default length)
  function checkNumberBytes(n, offset, length, max) {
    if (offset > n) { throw iae("Offset: " + offset + " is out of bounds for array with length: " + n + "!"); }
    if (offset + length > n) { throw iae("Offset: " + offset + " and Length: " + length + " is out of bounds for array with length: " + n + "!"); }
    if (length > max) { throw iae("Length: " + length + " is too large. Maximum " + max + " bytes is allowed!"); }
  }
  function defaultLength(n, offset, max) { return n < offset ? n : Math.min(n - offset, max); }
// the arguments of TbUtils' byte readers of ``width`` bytes, as Java's overloads default them
// (``argc``: how many the script gave): offset 0, the bytes left up to ``width``, big-endian
  function byteArgs(name, width, argc, data, offset, length, bigEndian) {
    var bytes = listBytes(name, data), n = bytes.length;
    offset = argc >= 2 ? offset : 0;
    return {bytes: bytes, n: n, offset: offset,
            length: argc >= 3 ? length : defaultLength(n, offset, width),
            bigEndian: argc >= 4 ? flag(name, bigEndian) : true};
  }
// byteArgs checked as TbUtils.parseBytesToInt / parseBytesToLong check theirs
// (validationNumberByLength, then ByteBuffer's own bounds for the byte order)
  function checkedBytes(name, width, argc, data, offset, length, bigEndian) {
    var a = byteArgs(name, width, argc, data, offset, length, bigEndian);
    checkNumberBytes(a.n, a.offset, a.length, width);
    byteBufferPut(width, a.offset, a.length, a.n, a.bigEndian);
    return a;
  }
// the whole number of ``width`` bytes a byteArgs reads (TbUtils.parseBytesLongToDouble,
// parseBytesIntToFloat), checked and bounded as TbUtils checks them
  function unsignedBytes(a, width) {
    checkNumberBytes(a.n, a.offset, a.length, width);
    byteBufferPut(width, a.offset, a.length, a.n, true);
    return unsignedOf(a.bytes, a.offset, a.length, a.bigEndian);
  }
// TbUtils.parseBytesToFloat / parseBytesToDouble: ``width`` bytes (4 or 8) of an IEEE number,
// ``argc`` the arguments the script gave (Java's overloads: offset 0, the default length,
// big-endian); a NaN is Java's NumberFormatException
  function bytesToFloating(name, width, argc, data, offset, length, bigEndian) {
    var a = byteArgs(name, width, argc, data, offset, length, bigEndian), i;
    var bytes = a.bytes, n = a.n;
    offset = a.offset; length = a.length; bigEndian = a.bigEndian;
    if (length > width) { throw new RangeError("BufferOverflowException"); }
    if (offset < 0 || length < 0 || offset + length > n) { throw new RangeError("IndexOutOfBoundsException"); }
    var dv = new DataView(new ArrayBuffer(width)), at = bigEndian ? width - length : 0;
    for (i = 0; i < length; i++) { dv.setUint8(at + i, bytes[offset + i]); }
    var v = width === 4 ? dv.getFloat32(0, !bigEndian) : dv.getFloat64(0, !bigEndian);
    if (v !== v) { throw nfe("byte[] 0x" + hexOf(bytes) + " is a Not-a-Number (NaN) value"); }
    return v;
  }
// TbUtils.prepareBytesToNumber: the bytes as an unsigned big-endian BigInt
  function unsignedOf(bytes, offset, length, bigEndian) {
    var v = 0n, i, b;
    for (i = 0; i < length; i++) {
      b = bytes[bigEndian ? offset + i : offset + length - 1 - i];
      v = v << 8n | BigInt(b & 255);
    }
    return v;
  }
  var HEX_DIGITS = "0123456789ABCDEF";
  function fixedHex(v, digits) {
    var out = BigInt.asUintN(digits * 4, v).toString(16).toUpperCase();
    return "0x" + "0".repeat(digits - out.length) + out;
  }
  var java = {
    Integer: {
      parseInt: function (s) { return javaParseInt(nonNull(s), radixOf("Integer.parseInt", arguments), 32); },
      valueOf: function (s) {
        if (typeof s === "number" && arguments.length === 1) {
          if (!isWhole(s) || s < -2147483648 || s > 2147483647) { throw new TypeError("Integer.valueOf(): " + s + " is not an int"); }
          return s;
        }
        return javaParseInt(nonNull(s), radixOf("Integer.valueOf", arguments), 32);
      },
      toString: function (i) {
        if (!isWhole(i)) { throw new TypeError("Integer.toString(): not a whole number"); }
        var r = arguments.length >= 2 && isWhole(arguments[1]) && arguments[1] >= 2 && arguments[1] <= 36 ? arguments[1] : 10;
        return (i | 0).toString(r);
      },
      toHexString: function (i) {
        if (!isWhole(i)) { throw new TypeError("Integer.toHexString(): not a whole number"); }
        return (i >>> 0).toString(16);
      }
    },
    Long: {
      parseLong: function (s) { return javaLong(nonNull(s), radixOf("Long.parseLong", arguments)); },
      valueOf: function (s) {
        if (typeof s === "number" && arguments.length === 1) {
          if (!isWhole(s)) { throw new TypeError("Long.valueOf(): " + s + " is not a long"); }
          return s;
        }
        return javaLong(nonNull(s), radixOf("Long.valueOf", arguments));
      }
    },
    Double: {
      parseDouble: function (s) { return javaFloatText(aText("Double.parseDouble", s)); },
      valueOf: function (s) { return typeof s === "number" ? s : javaFloatText(aText("Double.valueOf", s)); }
    },
    String: {valueOf: function (x) { return x === null || x === undefined ? "null" : x[__tbelS.toString](); }},
    Boolean: {parseBoolean: function (s) { return typeof s === "string" && s.toLowerCase() === "true"; }}
  };
// each method's overloads by argument count (java.lang's): another count is an error
  var ARITY = {Integer: {parseInt: [1, 2], valueOf: [1, 2], toString: [1, 2], toHexString: [1, 1]},
    Long: {parseLong: [1, 2], valueOf: [1, 2]}, Double: {parseDouble: [1, 1], valueOf: [1, 1]},
    String: {valueOf: [1, 1]}, Boolean: {parseBoolean: [1, 1]}, Date: {now: [0, 0], UTC: [1, 7], parse: [1, 2]}};
  java.Date = __tbelNewDate;
  Object.keys(__tbelDateStatics).forEach(function (k) { java.Date[k] = __tbelDateStatics[k]; });
  Object.keys(ARITY).forEach(function (cls) {
    Object.keys(ARITY[cls]).forEach(function (m) {
      java[cls][m] = arity(cls + "." + m, ARITY[cls][m][0], ARITY[cls][m][1], java[cls][m]);
    });
  });
  java.Integer.MAX_VALUE = 2147483647;
  java.Integer.MIN_VALUE = -2147483648;
  java.Double.MAX_VALUE = Number.MAX_VALUE;
  java.Double.MIN_VALUE = Number.MIN_VALUE;
  java.Double.POSITIVE_INFINITY = Infinity;
  java.Double.NEGATIVE_INFINITY = -Infinity;
  java.Double.NaN = NaN;
  Object.keys(java).forEach(function (name) {
    java[name] = new Proxy(Object.freeze(java[name]), {get: function (target, key) {
      if (typeof key === "symbol" || own.call(target, key)) { return target[key]; }
      throw new ReferenceError(name + "." + key + " is not supported here (see docs/rules-scripts.md)");
    }});
  });
  var h = {
// (each of TBEL_HELPERS, tbel_runtime.py)
// TbUtils.btoa, atob, stringToBytes(Object[, String]), bytesToString(List[, String]),
// decodeToString (bytesToString(List)), decodeToJson(List | String) (TbJson.parse)
    btoa: function (input) { return toBase64(utf8(aText("btoa", input))); },
    atob: function (encoded) { return fromUtf8(fromBase64(aText("atob", encoded))); },
    stringToBytes: function (str, cs) {
      if (typeof str !== "string") { throw new TypeError("Invalid type parameter [" + (str === null ? "null" : typeof str) + "]. Expected 'String'"); }
      return signed(encode(str, arguments.length >= 2 ? charset(cs) : "utf8"));
    },
    bytesToString: function (list, cs) {
      return decode(bytesFromList("bytesToString", list), arguments.length >= 2 ? charset(cs) : "utf8");
    },
    decodeToString: function (list) { return fromUtf8(bytesFromList("decodeToString", list)); },
    decodeToJson: function (v) {
      var s = Array.isArray(v) ? fromUtf8(bytesFromList("decodeToJson", v)) : aText("decodeToJson", v);
      return JSON.parse(s);
    },
// TbUtils.bytesToHex(ExecutionArrayList): Byte.parseByte of each element's text
    bytesToHex: function (list) {
      if (!Array.isArray(list)) { throw new TypeError("bytesToHex(): the argument is not a list"); }
      return hexOf(list.map(function (v) {
        var t = typeof v === "string" ? v : isWhole(v) ? String(v) : JSON.stringify(v);
        if (!/^[+-]?\d+$/.test(t) || Number(t) < -128 || Number(t) > 127) {
          throw nfe("Value out of range. Value:\"" + t + "\" Radix:10");
        }
        return Number(t) & 255;
      }));
    },
// TbUtils.hexToBytes, base64ToHex, hexToBase64 (its hexToBytes unchecked), base64ToBytesList
    hexToBytes: function (value) { return signed(hexToBytes(aText("hexToBytes", value))); },
    base64ToHex: function (s) { return hexOf(fromBase64(aText("base64ToHex", s))); },
    hexToBase64: function (hex) { return toBase64(rawHexToBytes(aText("hexToBase64", hex))); },
    base64ToBytesList: function (s) { return signed(fromBase64(aText("base64ToBytesList", s))); },
// TbUtils.parseInt(String[, int]), parseFloat(String[, int]) (Float.intBitsToFloat for hex),
// parseDouble(String) (Double.longBitsToDouble for hex)
    parseInt: function (value, radix) {
      if (arguments.length >= 2 && !isWhole(radix)) { throw new TypeError("parseInt(): the radix is not a whole number"); }
      return parseInt32(value, arguments.length >= 2 ? radix : 0, true);
    },
    parseFloat: function (value, radix) {
      var valueP = prepareNumberString(value, true);
      if (valueP === null) { return null; }
      var r = validRadix(valueP, arguments.length >= 2 ? radix : 0, value);
      if (r === 16) { var dv = new DataView(new ArrayBuffer(4)); dv.setUint32(0, Number(BigInt.asUintN(32, hexBig(valueP)))); return float32(dv.getFloat32(0)); }
      return float32(javaFloatText(value));
    },
    parseDouble: function (value) {
      if (arguments.length !== 1) { throw new TypeError("parseDouble() takes one argument"); }
      var r0 = radix1016(aText("parseDouble", value));
      var valueP = prepareNumberString(value, true);
      if (valueP === null) { return null; }
      var r = validRadix(valueP, r0, value);
      if (r === 10) { return javaFloatText(valueP); }
      var dv = new DataView(new ArrayBuffer(8));
      if (valueP[0] === "-") { throw nfe("Illegal leading minus sign on unsigned string " + valueP + "."); }
      dv.setBigUint64(0, BigInt.asUintN(64, hexBig(valueP)));
      return dv.getFloat64(0);
    },
// TbUtils.parseHexToInt(String[, boolean]), parseLittleEndianHexToInt, parseBigEndianHexToInt
// (the one-argument forms return int: blank text throws)
    parseHexToInt: function (hex, bigEndian) {
      var v = parseInt32(aText("parseHexToInt", hex), 16, arguments.length >= 2 ? flag("parseHexToInt", bigEndian) : true);
      if (v === null && arguments.length < 2) { throw new TypeError("parseHexToInt(): the value is blank (null)"); }
      return v;
    },
    parseLittleEndianHexToInt: function (hex) {
      var v = parseInt32(aText("parseLittleEndianHexToInt", hex), 16, false);
      if (v === null) { throw new TypeError("parseLittleEndianHexToInt(): the value is blank (null)"); }
      return v;
    },
    parseBigEndianHexToInt: function (hex) {
      var v = parseInt32(aText("parseBigEndianHexToInt", hex), 16, true);
      if (v === null) { throw new TypeError("parseBigEndianHexToInt(): the value is blank (null)"); }
      return v;
    },
// TbUtils.parseBytesToInt(List[, offset[, length[, bigEndian]]]) (validateLength,
// validationNumberByLength, ByteBuffer.getInt)
    parseBytesToInt: function (data, offset, length, bigEndian) {
      var a = checkedBytes("parseBytesToInt", 4, arguments.length, data, offset, length,
                           bigEndian);
      var bytes = a.bytes, v = 0, i;
      offset = a.offset; length = a.length; bigEndian = a.bigEndian;
      for (i = 0; i < length; i++) {
        v = bigEndian ? (v << 8 | bytes[offset + i]) : (v | bytes[offset + i] << (8 * i));
      }
      return v | 0;
    },
// NumberUtils.toFixed(double, int), toInt(double) (HALF_UP, then intValue), isNaN(double);
// TbUtils.isMap, isList, raiseError (RuntimeException), padStart, padEnd
// TbUtils.parseBytesToLong(List[, offset[, length[, bigEndian]]]) (up to 8 bytes, signed 64
// bits; exact only up to 2^53 here: beyond, an error), parseBytesToFloat (up to 4 bytes as
// ByteBuffer.getFloat, without parseBytesToInt's length checks: ByteBuffer's exceptions; NaN
// throws), parseHexToFloat(String[, boolean]) and its endian forms (Float.intBitsToFloat)
    parseBytesToLong: function (data, offset, length, bigEndian) {
      var a = checkedBytes("parseBytesToLong", 8, arguments.length, data, offset, length,
                           bigEndian);
      var bytes = a.bytes, v = 0n, i;
      offset = a.offset; length = a.length; bigEndian = a.bigEndian;
      for (i = 0; i < length; i++) {
        v = bigEndian ? (v << 8n | BigInt(bytes[offset + i])) : (v | BigInt(bytes[offset + i]) << BigInt(8 * i));
      }
      v = BigInt.asIntN(64, v);
      if (v > 9007199254740991n || v < -9007199254740991n) {
        throw new RangeError("parseBytesToLong(): " + v + " is beyond 2^53, not exact as a number here");
      }
      return Number(v);
    },
    parseBytesToFloat: function (data, offset, length, bigEndian) {
      return float32(bytesToFloating("parseBytesToFloat", 4, arguments.length, data, offset,
                                     length, bigEndian));
    },
    parseHexToFloat: function (hex, bigEndian) {
      var v = hexFloat(aText("parseHexToFloat", hex), arguments.length >= 2 ? flag("parseHexToFloat", bigEndian) : true);
      if (v === null && arguments.length < 2) { throw new TypeError("parseHexToFloat(): the value is blank (null)"); }
      return v;
    },
    parseLittleEndianHexToFloat: function (hex) {
      var v = hexFloat(aText("parseLittleEndianHexToFloat", hex), false);
      if (v === null) { throw new TypeError("parseLittleEndianHexToFloat(): the value is blank (null)"); }
      return v;
    },
    parseBigEndianHexToFloat: function (hex) {
      var v = hexFloat(aText("parseBigEndianHexToFloat", hex), true);
      if (v === null) { throw new TypeError("parseBigEndianHexToFloat(): the value is blank (null)"); }
      return v;
    },
// TbUtils.parseLong(String[, int]), parseHexToLong(String[, boolean]) and its endian forms (a
// Java long: exact up to 2^53 here, beyond it an error; the one-argument hex forms return long:
// blank text throws), parseHexToDouble(String[, boolean]) and its endian forms (the double's
// bits), parseHexIntLongToFloat(String, boolean) (the hex as an int, then a float: a whole
// number, held exactly, so that a division by a factor gives Java's float)
    parseLong: function (value, radix) {
      if (arguments.length >= 2 && !isWhole(radix)) { throw new TypeError("parseLong(): the radix is not a whole number"); }
      var v = parseLong64(value, arguments.length >= 2 ? radix : 0, true);
      return v === null ? null : exactLong("parseLong", v);
    },
    parseHexToLong: function (hex, bigEndian) {
      var v = parseLong64(aText("parseHexToLong", hex), 16, arguments.length >= 2 ? flag("parseHexToLong", bigEndian) : true);
      if (v === null) {
        if (arguments.length < 2) { throw new TypeError("parseHexToLong(): the value is blank (null)"); }
        return null;
      }
      return exactLong("parseHexToLong", v);
    },
    parseLittleEndianHexToLong: function (hex) {
      var v = parseLong64(aText("parseLittleEndianHexToLong", hex), 16, false);
      if (v === null) { throw new TypeError("parseLittleEndianHexToLong(): the value is blank (null)"); }
      return exactLong("parseLittleEndianHexToLong", v);
    },
    parseBigEndianHexToLong: function (hex) {
      var v = parseLong64(aText("parseBigEndianHexToLong", hex), 16, true);
      if (v === null) { throw new TypeError("parseBigEndianHexToLong(): the value is blank (null)"); }
      return exactLong("parseBigEndianHexToLong", v);
    },
    parseHexToDouble: function (hex, bigEndian) {
      var valueP = prepareNumberString(aText("parseHexToDouble", hex), arguments.length >= 2 ? flag("parseHexToDouble", bigEndian) : true);
      if (valueP === null) { throw new TypeError("parseHexToDouble(): the value is blank (null)"); }
      validRadix(valueP, 16, hex);
      return hexDouble(valueP);
    },
    parseLittleEndianHexToDouble: function (hex) {
      var valueP = prepareNumberString(aText("parseLittleEndianHexToDouble", hex), false);
      if (valueP === null) { throw new TypeError("parseLittleEndianHexToDouble(): the value is blank (null)"); }
      validRadix(valueP, 16, hex);
      return hexDouble(valueP);
    },
    parseBigEndianHexToDouble: function (hex) {
      var valueP = prepareNumberString(aText("parseBigEndianHexToDouble", hex), true);
      if (valueP === null) { throw new TypeError("parseBigEndianHexToDouble(): the value is blank (null)"); }
      validRadix(valueP, 16, hex);
      return hexDouble(valueP);
    },
    parseHexIntLongToFloat: function (hex, bigEndian) {
      var valueP = prepareNumberString(aText("parseHexIntLongToFloat", hex), flag("parseHexIntLongToFloat", bigEndian));
      if (valueP === null) { return null; }
      validRadix(valueP, 16, hex);
      return Math.fround(Number(BigInt.asIntN(32, javaLongBig(valueP, 16))));
    },
// TbUtils.parseBytesToDouble(List[, offset[, length[, bigEndian]]]) (up to 8 bytes as
// ByteBuffer.getDouble, without length checks: ByteBuffer's exceptions; NaN throws),
// parseBytesLongToDouble (validationNumberByLength, the bytes as an unsigned BigInteger, its
// doubleValue), parseBytesIntToFloat (up to 4 bytes, unsigned, its floatValue: a whole number,
// held exactly, so that a division by a factor gives Java's float: 118030576 / 1e6 is 118.030576)
    parseBytesToDouble: function (data, offset, length, bigEndian) {
      return bytesToFloating("parseBytesToDouble", 8, arguments.length, data, offset, length,
                             bigEndian);
    },
    parseBytesLongToDouble: function (data, offset, length, bigEndian) {
      return Number(unsignedBytes(byteArgs("parseBytesLongToDouble", 8, arguments.length, data,
                                           offset, length, bigEndian), 8));
    },
    parseBytesIntToFloat: function (data, offset, length, bigEndian) {
      return Math.fround(Number(unsignedBytes(byteArgs("parseBytesIntToFloat", 4,
                                                       arguments.length, data, offset, length,
                                                       bigEndian), 4)));
    },
// TbUtils.base64ToBytes (a byte[]: the signed bytes as a list), bytesToBase64(byte[]) (a list of
// numbers, each as Number.byteValue), hexToBytesArray (hexToBytes as a byte[]), printUnsignedBytes
// (Byte.toUnsignedInt of each)
    base64ToBytes: function (s) { return signed(fromBase64(aText("base64ToBytes", s))); },
    bytesToBase64: function (list) { return toBase64(listBytes("bytesToBase64", list)); },
    hexToBytesArray: function (value) { return signed(hexToBytes(aText("hexToBytesArray", value))); },
    printUnsignedBytes: function (list) {
// for (Byte b : byteArray): an item of a list that is not of Bytes is a ClassCastException
      if (Array.isArray(list) && list.length > 0 && !__tbelBytes.has(list)) { throw classCast(list[0], "java.lang.Byte"); }
      return listBytes("printUnsignedBytes", list);
    },
// TbUtils.longToHex(Long[, bigEndian[, pref[, len]]]) (at most 16 digits), floatToHex(Float[,
// bigEndian]) ("0x%08X" of Float.floatToIntBits), doubleToHex(Double[, bigEndian]) ("0x%016X" of
// Double.doubleToRawLongBits), intLongToRadixString(Long[, radix[, bigEndian[, pref]]])
// (Long.toString for 10 and 25..36, the unsigned Long.toBinaryString padded to 8/16/32/64
// digits, Long.toOctalString, prepareNumberHexString for 16)
    longToHex: function (l, bigEndian, pref, len) {
      return numberHex(longArg("longToHex", l), arguments.length >= 2 ? flag("longToHex", bigEndian) : true,
        arguments.length >= 3 ? flag("longToHex", pref) : false, arguments.length >= 4 ? len : -1, 16);
    },
    floatToHex: function (f, bigEndian) {
      if (typeof f !== "number") { throw new TypeError("floatToHex(): the argument is not a number"); }
      var dv = new DataView(new ArrayBuffer(4));
      dv.setFloat32(0, f);
      var out = fixedHex(BigInt(f !== f ? 0x7FC00000 : dv.getUint32(0)), 8);
      return arguments.length < 2 || flag("floatToHex", bigEndian) ? out : reverseHex(out);
    },
    doubleToHex: function (d, bigEndian) {
      if (typeof d !== "number") { throw new TypeError("doubleToHex(): the argument is not a number"); }
      var dv = new DataView(new ArrayBuffer(8));
      dv.setFloat64(0, d);
      var out = fixedHex(dv.getBigUint64(0), 16);
      return arguments.length < 2 || flag("doubleToHex", bigEndian) ? out : reverseHex(out);
    },
    intLongToRadixString: function (number, radix, bigEndian, pref) {
      var v = longArg("intLongToRadixString", number), out;
      radix = arguments.length >= 2 ? radix : 10;
      if (!isWhole(radix)) { throw new TypeError("intLongToRadixString(): the radix is not a whole number"); }
      if ((radix >= 25 && radix <= 36) || radix === 10) { return v.toString(radix); }
      if (radix === 2) {
        out = BigInt.asUintN(64, v).toString(2);
        var width = out.length < 8 ? 8 : out.length < 16 ? 16 : out.length < 32 ? 32 : 64;
        return out.padStart(width, "0");
      }
      if (radix === 8) { return BigInt.asUintN(64, v).toString(8); }
      if (radix === 16) {
        return numberHex(v, arguments.length >= 3 ? flag("intLongToRadixString", bigEndian) : true,
          arguments.length >= 4 ? flag("intLongToRadixString", pref) : false, -1, -1);
      }
      throw iae("Invalid radix: [" + radix + "]");
    },
// TbUtils.intToHex(Integer[, bigEndian[, pref[, len]]]) (prepareNumberHexString,
// removeLeadingZero_FF: at most 8 digits)
    intToHex: function (i, bigEndian, pref, len) {
      if (!isWhole(i) || i < -2147483648 || i > 2147483647) { throw new TypeError("intToHex(): not an int"); }
      return numberHex(BigInt(i), arguments.length >= 2 ? flag("intToHex", bigEndian) : true,
        arguments.length >= 3 ? flag("intToHex", pref) : false, arguments.length >= 4 ? len : -1, 8);
    },
    toFixed: function (value, precision) {
      if (!isWhole(precision)) { throw new TypeError("toFixed(): the precision is not a whole number"); }
      return halfUp(value, precision);
    },
    toInt: function (value) { return halfUp(value, 0) | 0; },
    isNaN: function (value) {
      if (typeof value !== "number") { throw new TypeError("isNaN(): the argument is not a number"); }
      return value !== value;
    },
    isMap: function (v) { return v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof __TbelEntry) && !(v instanceof __TbelDate); },
    isList: function (v) { return Array.isArray(v); },
    raiseError: function (message) { throw new Error(message === null || message === undefined ? "null" : String(message)); },
    padStart: function (str, length, c) {
      aText("padStart", str);
      if (typeof c !== "string" || c.length !== 1) { throw new TypeError("padStart(): the pad is not one character"); }
      while (str.length < length) { str = c + str; }
      return str;
    },
    padEnd: function (str, length, c) {
      aText("padEnd", str);
      if (typeof c !== "string" || c.length !== 1) { throw new TypeError("padEnd(): the pad is not one character"); }
      while (str.length < length) { str = str + c; }
      return str;
    },
    encodeURI: function (uri) {
      var bytes = utf8(aText("encodeURI", uri)), out = "", i, c;
      for (i = 0; i < bytes.length; i++) {
        c = String.fromCharCode(bytes[i]);
        out += bytes[i] < 128 && FORM_SAFE.test(c) ? c : c === " " ? "+" : "%" + hexOf([bytes[i]]);
      }
      for (i = 0; i < URI_REPLACE.length; i++) { out = replaceAll(out, URI_REPLACE[i][0], URI_REPLACE[i][1]); }
      return out;
    },
    decodeURI: function (uri) {
      var s = aText("decodeURI", uri), i, bytes = [], out = "", c;
      for (i = URI_REPLACE.length - 1; i >= 0; i--) { s = replaceAll(s, URI_REPLACE[i][1], URI_REPLACE[i][0]); }
      function flush() { if (bytes.length) { out += fromUtf8(bytes); bytes = []; } }
      for (i = 0; i < s.length; i++) {
        c = s[i];
        if (c === "%") {
          var h = s.slice(i + 1, i + 3);
          if (!/^[0-9A-Fa-f]{2}$/.test(h)) { throw iae("URLDecoder: Illegal hex characters in escape (%) pattern"); }
          bytes.push(Number("0x" + h));
          i += 2;
          continue;
        }
        flush();
        out += c === "+" ? " " : c;
      }
      flush();
      return out;
    }
  };
// TbUtils's overloads of each helper by argument count (its parserConfig.addImport stubs, less the
// ExecutionContext some take first): another count is an error, as MVEL finds no method
  var HELPERS = {btoa: [1, 1], atob: [1, 1], stringToBytes: [1, 2], bytesToString: [1, 2],
    decodeToString: [1, 1], decodeToJson: [1, 1], bytesToHex: [1, 1], hexToBytes: [1, 1],
    base64ToHex: [1, 1], hexToBase64: [1, 1], base64ToBytesList: [1, 1], parseInt: [1, 2],
    parseFloat: [1, 2], parseDouble: [1, 1], parseHexToInt: [1, 2], parseLittleEndianHexToInt: [1, 1],
    parseBigEndianHexToInt: [1, 1], parseBytesToInt: [1, 4], parseBytesToLong: [1, 4],
    parseBytesToFloat: [1, 4], parseHexToFloat: [1, 2], parseLittleEndianHexToFloat: [1, 1],
    parseBigEndianHexToFloat: [1, 1], intToHex: [1, 4], toFixed: [2, 2], toInt: [1, 1], isNaN: [1, 1],
    isMap: [1, 1], isList: [1, 1], raiseError: [1, 1], padStart: [3, 3], padEnd: [3, 3],
    encodeURI: [1, 1], decodeURI: [1, 1], parseLong: [1, 2], parseHexToLong: [1, 2],
    parseLittleEndianHexToLong: [1, 1], parseBigEndianHexToLong: [1, 1], parseHexToDouble: [1, 2],
    parseLittleEndianHexToDouble: [1, 1], parseBigEndianHexToDouble: [1, 1],
    parseHexIntLongToFloat: [2, 2], parseBytesToDouble: [1, 4], parseBytesLongToDouble: [1, 4],
    parseBytesIntToFloat: [1, 4], base64ToBytes: [1, 1], bytesToBase64: [1, 1],
    hexToBytesArray: [1, 1], printUnsignedBytes: [1, 1], longToHex: [1, 4], floatToHex: [1, 2],
    doubleToHex: [1, 2], intLongToRadixString: [1, 4]};
  var out = {java: java};
  Object.keys(HELPERS).forEach(function (name) {
    out[name] = arity(name, HELPERS[name][0], HELPERS[name][1], h[name]);
  });
  return Object.freeze(out);
})();
// the script's scope binds each helper afresh per call (sandbox.py: var btoa = __tbelH.btoa, ...)
var __tbelJava = __tbelH.java;
// Called once the wrapper is built (sandbox.py, after the epilogue): each call of a TBEL script
// starts from the same state, as each MVEL run has fresh variables. No code made from text: the
// global eval and Function go, and the constructor of every kind of function (reachable as
// x.constructor.constructor) is undefined. Nothing a script reaches persists: the intrinsics
// (every object reachable from the global object) are frozen, and the global object takes no new
// property and has its own ones read-only (but __edgeAt, the wrapper's). A frozen
// Object.prototype or Error.prototype would make an assignment of a key of the same name
// (m.constructor = 1, e.name = ...) fail: their data properties become accessors whose setter
// makes the key the object's own (the "override mistake"), so a map's key "constructor" or
// "toString" still reads and writes as any other.
// The runtime's own objects (the helpers, __tbelS, the Java classes, TbDate's prototype, ...)
// and the wrapper's functions it is given (``roots``) are frozen by the same walk: a script
// could reach them by a helper's name, a value's constructor, or arguments.callee.
// Object.prototype's __proto__ becomes a key as any other (a TBEL map is a LinkedHashMap): a
// read of a map with no such key is undefined (null), a write defines the map's own key.
var __tbelLock = function (roots) {
  "use strict";
  var G = globalThis;
  Object.defineProperty(Object.prototype, "__proto__", {configurable: false, enumerable: false,
    get: function () { return undefined; },
    set: function (v) {
      if (this === Object.prototype) { throw new TypeError("Cannot assign to read only property '__proto__'"); }
      Object.defineProperty(this, "__proto__", {value: v, writable: true, enumerable: true, configurable: true});
    }});
  delete G.eval;
  delete G.Function;
  [function () {}, async function () {}, function* () {}, async function* () {}].forEach(function (f) {
    Object.defineProperty(Object.getPrototypeOf(f), "constructor", {value: undefined, writable: false, configurable: false});
  });
  function tame(o) {
    Object.getOwnPropertyNames(o).forEach(function (k) {
      var d = Object.getOwnPropertyDescriptor(o, k);
      if (!("value" in d) || !d.writable || !d.configurable) { return; }
      var value = d.value;
      Object.defineProperty(o, k, {configurable: false, enumerable: d.enumerable,
        get: function () { return value; },
        set: function (v) {
          if (this === o) { throw new TypeError("Cannot assign to read only property '" + k + "'"); }
          Object.defineProperty(this, k, {value: v, writable: true, enumerable: true, configurable: true});
        }});
    });
  }
  // quickjs-ng keeps these two in the context, not on Error (its freeze does not stop a write):
  // a function set as prepareStackTrace would run, with what it closed over, in later calls
  Object.defineProperty(Error, "prepareStackTrace", {value: undefined, writable: false, configurable: false});
  Object.defineProperty(Error, "stackTraceLimit", {value: 10, writable: false, configurable: false});
  // a promise's job outlives the call (the engine never runs it), its memory held until the cap;
  // the runtime uses none of these
  delete G.Promise;
  delete G.queueMicrotask;
  delete G.FinalizationRegistry;
  delete G.WeakRef;
  tame(Object.prototype);
  [Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError, InternalError, AggregateError].forEach(function (E) { tame(E.prototype); });
  var seen = new Set(), todo = [];
  function add(v) {
    if (v !== null && (typeof v === "object" || typeof v === "function") && v !== G && !seen.has(v)) { seen.add(v); todo.push(v); }
  }
  Object.getOwnPropertyNames(G).forEach(function (k) { if (k !== "__edgeAt") { add(G[k]); } });
  [__tbelBytes, __tbelS, __tbelG, __tbelH, __tbelJava, __TbelEntry, __tbelIter, __tbelRegex, __TbelDate,
    __tbelNewDate, __tbelDateStatics].concat(roots || []).forEach(add);
  while (todo.length) {
    var o = todo.pop();
    add(Object.getPrototypeOf(o));
    Reflect.ownKeys(o).forEach(function (k) {
      var d = Object.getOwnPropertyDescriptor(o, k);
      if ("value" in d) { add(d.value); } else { add(d.get); add(d.set); }
    });
    Object.freeze(o);
  }
  Object.getOwnPropertyNames(G).forEach(function (k) {
    if (k !== "__edgeAt") { Object.defineProperty(G, k, {writable: false, configurable: false}); }
  });
  Object.preventExtensions(G);
};
