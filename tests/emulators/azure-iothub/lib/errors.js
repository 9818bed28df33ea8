// SPDX-License-Identifier: MIT
// IoT Hub's error answers. Codes: the REST reference's "common error codes" page. Bodies:
//  - MQTT twin answers: {"errorCode":429001,"trackingId":...,"message":...,"timestampUtc":...}
//    (the Node device SDK fails a twin request only when the body has an errorCode);
//  - REST: {"Message":"ErrorCode:DeviceNotFound;...","ExceptionMessage":"Tracking ID:..."} with
//    an iothub-errorcode header, the form the Node service SDK parses (Http.parseErrorBody).
'use strict'

const crypto = require('crypto')

const BY_STATUS = {
  400: ['ArgumentInvalid', 400004],
  401: ['IotHubUnauthorizedAccess', 401002],
  403: ['IotHubQuotaExceeded', 403002],
  404: ['DeviceNotFound', 404001],
  409: ['DeviceAlreadyExists', 409001],
  412: ['PreconditionFailed', 412001],
  413: ['MessageTooLarge', 413001],
  429: ['ThrottlingException', 429001],
  500: ['ServerError', 500001],
  503: ['ServiceUnavailable', 503001],
  504: ['GatewayTimeout', 504101]
}

function describe (status) {
  const [name, code] = BY_STATUS[status] || ['ServerError', status * 1000 + 1]
  return { name, code }
}

function trackingId () {
  return crypto.randomBytes(16).toString('hex')
}

function mqttBody (status, message, code) {
  return {
    errorCode: code || describe(status).code,
    trackingId: trackingId(),
    message: message || describe(status).name,
    timestampUtc: new Date().toISOString()
  }
}

// "09/29/2017 15:53:06", the ExceptionMessage's timestamp form.
function restTimestamp (d = new Date()) {
  const p = n => String(n).padStart(2, '0')
  return `${p(d.getUTCMonth() + 1)}/${p(d.getUTCDate())}/${d.getUTCFullYear()} ` +
    `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}`
}

// Answers res with IoT Hub's REST error; name overrides the name the status implies.
function sendRest (res, status, message, { name, headers } = {}) {
  const n = name || describe(status).name
  const body = JSON.stringify({
    Message: `ErrorCode:${n};${message || n}`,
    ExceptionMessage: `Tracking ID:${trackingId()}-G:0-TimeStamp:${restTimestamp()}`
  })
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'iothub-errorcode': n,
    ...(headers || {})
  })
  res.end(body)
}

module.exports = { describe, mqttBody, sendRest }
