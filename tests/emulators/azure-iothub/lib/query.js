// SPDX-License-Identifier: MIT
// A documented subset of the IoT Hub query language (iot-hub-devguide-query-language.md,
// query-twins.md) over twins:
//   SELECT [TOP n] * | path [AS alias] [, ...] FROM devices | devices.modules [WHERE cond]
// cond: = != <> < > <= >=, IN [...], NIN [...], AND, OR, NOT, parentheses, IS_DEFINED(path),
// string (' or "), number, true, false, null literals. Everything else (GROUP BY, aggregates,
// arithmetic, other functions, devices.jobs) is refused with a QueryError that says so.
'use strict'

const MAX_LENGTH = 8192 // "Query expressions can have a maximum length of 8192 characters."

class QueryError extends Error {}

const KEYWORDS = new Set(['SELECT', 'TOP', 'FROM', 'WHERE', 'AND', 'OR', 'NOT', 'AS', 'IN', 'NIN',
  'GROUP', 'BY', 'ORDER', 'TRUE', 'FALSE', 'NULL', 'UNDEFINED', 'JOIN'])

function unsupported (what) {
  return new QueryError(`the emulator does not support ${what}`)
}

function tokenize (text) {
  const tokens = []
  let i = 0
  while (i < text.length) {
    const c = text[i]
    if (/\s/.test(c)) { i++; continue }
    const rest = text.slice(i)
    let m
    if ((m = /^[A-Za-z_$][A-Za-z0-9_$]*/.exec(rest))) {
      const up = m[0].toUpperCase()
      tokens.push(KEYWORDS.has(up) ? { t: 'kw', v: up } : { t: 'id', v: m[0] })
    } else if ((m = /^0[xX][0-9a-fA-F]+|^\d+(\.\d+)?([eE][+-]?\d+)?/.exec(rest))) {
      tokens.push({ t: 'num', v: Number(m[0]) })
    } else if (c === "'" || c === '"') {
      let j = i + 1
      let s = ''
      for (;;) {
        if (j >= text.length) throw new QueryError(`unterminated string at ${i}`)
        const d = text[j]
        if (d === c) break
        if (d === '\\') {
          const e = text[j + 1]
          if (e === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(j + 2, j + 6))) {
            s += String.fromCharCode(parseInt(text.slice(j + 2, j + 6), 16))
            j += 6
            continue
          }
          if (e !== "'" && e !== '"' && e !== '\\') throw new QueryError(`bad escape at ${j}`)
          s += e
          j += 2
          continue
        }
        s += d
        j++
      }
      tokens.push({ t: 'str', v: s })
      m = [text.slice(i, j + 1)]
    } else if ((m = /^(<=|>=|<>|!=|=|<|>|\(|\)|,|\.|\*|\[|\])/.exec(rest))) {
      tokens.push({ t: 'op', v: m[0] })
    } else if ((m = /^[-+/%]/.exec(rest))) {
      if (m[0] === '-' && /^-\d/.test(rest) && !endsOperand(tokens)) {
        m = /^-(0[xX][0-9a-fA-F]+|\d+(\.\d+)?([eE][+-]?\d+)?)/.exec(rest)
        tokens.push({ t: 'num', v: -Number(m[1]) })
      } else {
        throw unsupported(`arithmetic ('${m[0]}' at ${i})`)
      }
    } else {
      throw new QueryError(`unexpected character '${c}' at ${i}`)
    }
    i += m[0].length
  }
  tokens.push({ t: 'end' })
  return tokens
}

function endsOperand (tokens) {
  const last = tokens[tokens.length - 1]
  return last && (last.t === 'id' || last.t === 'num' || last.t === 'str' || (last.t === 'op' && (last.v === ')' || last.v === ']')))
}

class Parser {
  constructor (text) {
    this.tokens = tokenize(text)
    this.i = 0
  }

  peek () { return this.tokens[this.i] }
  next () { return this.tokens[this.i++] }
  is (t, v) { const k = this.peek(); return k.t === t && (v === undefined || k.v === v) }
  accept (t, v) { if (this.is(t, v)) return this.next(); return null }
  expect (t, v, what) {
    const k = this.accept(t, v)
    if (!k) throw new QueryError(`expected ${what || v || t}, found ${describe(this.peek())}`)
    return k
  }

  query () {
    this.expect('kw', 'SELECT')
    let top = null
    if (this.accept('kw', 'TOP')) {
      const n = this.expect('num', undefined, 'a number after TOP').v
      if (!Number.isInteger(n) || n < 0) throw new QueryError('TOP takes a non-negative integer')
      top = n
    }
    const projection = this.projection()
    this.expect('kw', 'FROM')
    const from = this.source()
    let where = null
    if (this.accept('kw', 'WHERE')) where = this.or()
    if (this.is('kw', 'GROUP')) throw unsupported('GROUP BY')
    if (this.is('kw', 'ORDER')) throw unsupported('ORDER BY')
    if (!this.is('end')) throw new QueryError(`unexpected ${describe(this.peek())}`)
    return { top, projection, from, where }
  }

  projection () {
    if (this.accept('op', '*')) return null
    const list = []
    do {
      if (this.is('id') && this.tokens[this.i + 1].t === 'op' && this.tokens[this.i + 1].v === '(') {
        throw unsupported(`functions or aggregates in SELECT ('${this.peek().v}(')`)
      }
      const path = this.path()
      let alias = null
      if (this.accept('kw', 'AS')) alias = this.expect('id', undefined, 'an alias').v
      list.push({ path, alias })
    } while (this.accept('op', ','))
    return list
  }

  source () {
    const first = this.expect('id', undefined, 'devices').v
    if (first.toLowerCase() !== 'devices') throw new QueryError(`FROM ${first}: only devices and devices.modules`)
    if (!this.accept('op', '.')) return 'devices'
    const second = this.expect('id', undefined, 'modules').v.toLowerCase()
    if (second === 'modules') return 'devices.modules'
    if (second === 'jobs') throw unsupported('FROM devices.jobs')
    throw new QueryError(`FROM devices.${second}: only devices and devices.modules`)
  }

  path () {
    const segs = [this.expect('id', undefined, 'a property name').v]
    while (this.accept('op', '.')) segs.push(this.expect('id', undefined, 'a property name').v)
    if (this.is('op', '[')) throw unsupported('[] property access')
    return segs
  }

  or () {
    let left = this.and()
    while (this.accept('kw', 'OR')) left = { op: 'OR', left, right: this.and() }
    return left
  }

  and () {
    let left = this.not()
    while (this.accept('kw', 'AND')) left = { op: 'AND', left, right: this.not() }
    return left
  }

  not () {
    if (this.accept('kw', 'NOT')) return { op: 'NOT', arg: this.not() }
    return this.comparison()
  }

  comparison () {
    const left = this.operand()
    const k = this.peek()
    if (k.t === 'op' && ['=', '!=', '<>', '<', '>', '<=', '>='].includes(k.v)) {
      this.next()
      return { op: k.v === '<>' ? '!=' : k.v, left, right: this.operand() }
    }
    if (this.accept('kw', 'IN')) return { op: 'IN', left, list: this.array() }
    if (this.accept('kw', 'NIN')) return { op: 'NIN', left, list: this.array() }
    return left
  }

  array () {
    this.expect('op', '[')
    const list = []
    if (!this.is('op', ']')) {
      do {
        const c = this.constant()
        if (c === null) throw new QueryError(`expected a constant in [...], found ${describe(this.peek())}`)
        list.push(c.value)
      } while (this.accept('op', ','))
    }
    this.expect('op', ']')
    return list
  }

  constant () {
    const k = this.peek()
    if (k.t === 'str' || k.t === 'num') { this.next(); return { value: k.v } }
    if (k.t === 'kw' && ['TRUE', 'FALSE', 'NULL', 'UNDEFINED'].includes(k.v)) {
      this.next()
      return { value: { TRUE: true, FALSE: false, NULL: null, UNDEFINED: undefined }[k.v] }
    }
    return null
  }

  operand () {
    if (this.accept('op', '(')) {
      const e = this.or()
      this.expect('op', ')')
      return e
    }
    const c = this.constant()
    if (c) return { op: 'const', value: c.value }
    if (this.is('op', '[')) throw unsupported('array constants outside IN/NIN')
    if (this.is('id') && this.tokens[this.i + 1].t === 'op' && this.tokens[this.i + 1].v === '(') {
      const name = this.next().v
      if (name.toUpperCase() !== 'IS_DEFINED') throw unsupported(`the function ${name}()`)
      this.expect('op', '(')
      const path = this.path()
      this.expect('op', ')')
      return { op: 'IS_DEFINED', path }
    }
    if (this.is('id')) return { op: 'path', path: this.path() }
    throw new QueryError(`expected an operand, found ${describe(this.peek())}`)
  }
}

function describe (k) {
  if (k.t === 'end') return 'the end of the query'
  if (k.t === 'str') return `'${k.v}'`
  return `'${k.v}'`
}

// Property names match exactly first, then case-insensitively (query-twins.md's example:
// "SELECT DeviceId" returns "deviceId"). Returns { value, key } with the document's own key.
function resolve (doc, path) {
  let v = doc
  let key = path[path.length - 1]
  for (const seg of path) {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return { value: undefined, key }
    if (Object.prototype.hasOwnProperty.call(v, seg)) {
      key = seg
      v = v[seg]
      continue
    }
    const matches = Object.keys(v).filter(k => k.toLowerCase() === seg.toLowerCase())
    if (matches.length !== 1) return { value: undefined, key }
    key = matches[0]
    v = v[key]
  }
  return { value: v, key }
}

function primitive (v) {
  return v === null || ['string', 'number', 'boolean'].includes(typeof v)
}

function typeOf (v) {
  return v === null ? 'null' : typeof v
}

// Three-valued: true, false or undefined (a missing property, or operands of different
// types, give undefined, as in the Cosmos DB SQL dialect IoT Hub's language follows).
function evaluate (e, doc) {
  switch (e.op) {
    case 'const': return e.value
    case 'path': return resolve(doc, e.path).value
    case 'IS_DEFINED': return resolve(doc, e.path).value !== undefined
    case 'NOT': {
      const a = evaluate(e.arg, doc)
      return typeof a === 'boolean' ? !a : undefined
    }
    case 'AND': {
      const a = evaluate(e.left, doc)
      const b = evaluate(e.right, doc)
      if (a === false || b === false) return false
      return a === true && b === true ? true : undefined
    }
    case 'OR': {
      const a = evaluate(e.left, doc)
      const b = evaluate(e.right, doc)
      if (a === true || b === true) return true
      return a === false && b === false ? false : undefined
    }
    case 'IN':
    case 'NIN': {
      const a = evaluate(e.left, doc)
      if (a === undefined || !primitive(a)) return undefined
      const found = e.list.some(c => typeOf(c) === typeOf(a) && c === a)
      return e.op === 'IN' ? found : !found
    }
  }
  const a = evaluate(e.left, doc)
  const b = evaluate(e.right, doc)
  if (a === undefined || b === undefined || !primitive(a) || !primitive(b)) return undefined
  if (typeOf(a) !== typeOf(b)) return undefined
  switch (e.op) {
    case '=': return a === b
    case '!=': return a !== b
  }
  if (typeof a !== 'number' && typeof a !== 'string') return undefined
  switch (e.op) {
    case '<': return a < b
    case '>': return a > b
    case '<=': return a <= b
    case '>=': return a >= b
  }
  throw new Error(`unknown operator ${e.op}`)
}

function parse (text) {
  if (typeof text !== 'string' || text.trim() === '') throw new QueryError('empty query')
  if (text.length > MAX_LENGTH) throw new QueryError(`query longer than ${MAX_LENGTH} characters`)
  return new Parser(text).query()
}

// Runs a parsed query over REST twin documents; returns { items, itemType }.
function run (q, docs) {
  let rows = q.where ? docs.filter(d => evaluate(q.where, d) === true) : docs
  if (q.top !== null) rows = rows.slice(0, q.top)
  if (!q.projection) return { items: rows, itemType: 'Twin' }
  const items = rows.map(d => {
    const out = {}
    for (const p of q.projection) {
      const r = resolve(d, p.path)
      if (r.value !== undefined) out[p.alias || r.key] = r.value
    }
    return out
  })
  return { items, itemType: 'JSON' }
}

module.exports = { parse, run, QueryError, MAX_LENGTH }
