#!/usr/bin/env node
// send.js - send one message to sesrelay with nodemailer over plain SMTP.
//
// Usage: node send.js PORT [HOST]
// Sends from/to/cc/bcc, a UTF-8 subject, a text body and one attachment, and
// prints nodemailer's result as JSON on stdout (envelope, accepted,
// rejected, response).  Exits non-zero when sending fails.
'use strict';

const nodemailer = require('nodemailer');

async function main() {
    const port = parseInt(process.argv[2], 10);
    const host = process.argv[3] || '127.0.0.1';
    if (!port) {
        console.error('usage: node send.js PORT [HOST]');
        process.exit(2);
    }
    const transport = nodemailer.createTransport({
        host,
        port,
        secure: false,
        ignoreTLS: true,
        name: 'nodemailer.test',
        connectionTimeout: 10000,
        greetingTimeout: 10000,
        socketTimeout: 20000,
    });
    const info = await transport.sendMail({
        from: '"Alice Ä" <alice@example.com>',
        to: 'bob@example.net',
        cc: 'carol@example.org',
        bcc: 'secret-dave@example.com',
        subject: 'Grüße aus Köln – ☃ test',
        text: 'Hello from nodemailer.\n.a line starting with a dot\n',
        attachments: [
            {
                filename: 'report.bin',
                content: Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 256)),
                contentType: 'application/octet-stream',
            },
        ],
    });
    transport.close();
    process.stdout.write(JSON.stringify({
        envelope: info.envelope,
        accepted: info.accepted,
        rejected: info.rejected,
        response: info.response,
        messageId: info.messageId,
    }) + '\n');
}

main().catch((err) => {
    console.error('send failed:', err && err.stack ? err.stack : err);
    process.exit(1);
});
