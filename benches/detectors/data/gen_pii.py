#!/usr/bin/env python3
"""Generate the structured-PII corpus `pii_faker.jsonl` for the detector bench.

Each line: {"locale", "text", "entities": [{"type", "start", "end", "value"}]}
with UTF-8 byte offsets. Values come from Faker (e-mail, phone, card, IBAN,
IP addresses, dates of birth, US SSN, FR NIR, ES DNI/NIE, IT codice fiscale,
NL BSN, BE national number); the German tax ID and the UK NINO are built here
from their published rules (Faker's de_DE has no tax ID, and its en_GB NINO
uses the never-issued ZZ prefix). About a third of the lines carry no PII but
numbers that look like it (order numbers, prices, versions, unlabelled dates,
postcodes) to measure false positives.

Reproduce (writes next to this script):
    python3 -m venv ~/.cache/tappass/faker-venv
    ~/.cache/tappass/faker-venv/bin/pip install faker==40.54.0
    ~/.cache/tappass/faker-venv/bin/python benches/detectors/data/gen_pii.py
"""

import json
import os
import random

from faker import Faker

SEED = 20261122
LINES_PER_LOCALE = 450
NEGATIVE_SHARE = 0.3

# Per locale: label words and sentence templates. `{x}` marks the entity slot.
T = {
    "en_US": {
        "email": ["Please email me at {x} when the report is ready.", "My work address is {x}, reply there.", "Send the invoice to {x} by Friday.", "You can reach our support team at {x}."],
        "phone": ["Call me at {x} after 5pm.", "My cell is {x}.", "The front desk number is {x}, ask for Dana.", "Text {x} if the delivery is late."],
        "card": ["Charge it to my card {x}, expiry 04/27.", "The card number is {x}.", "I paid with {x} but the order failed."],
        "iban": ["Wire the refund to IBAN {x}.", "Our account is {x} at the Berlin branch."],
        "ssn": ["My SSN is {x}.", "Social Security number: {x}", "For the background check, SSN {x}."],
        "ipv4": ["The server at {x} stopped answering pings.", "Block traffic from {x} on the firewall."],
        "ipv6": ["The host resolves to {x} over IPv6.", "Whitelist {x} in the security group."],
        "dob": ["Date of birth: {x}", "Patient DOB {x}, please verify.", "I was born on {x}."],
        "neg": ["Order #{n5}-{n4} shipped on {date} and costs ${price}.", "We upgraded to version {ver} last week.", "The meeting moved to room {n3} at {time}.", "Invoice {n8} totals ${price}, due in 30 days.", "Our office is at {address}.", "Tracking number {n12} shows it left the depot.", "The build took {n3} seconds and used {n4} MB of RAM.", "Quarterly revenue grew {pct}% to ${n6}."],
    },
    "en_GB": {
        "email": ["Drop me a line at {x}.", "Please reply to {x} with the signed form.", "Contact {x} for the rota."],
        "phone": ["Ring me on {x} tomorrow.", "My mobile is {x}.", "The surgery's number is {x}."],
        "card": ["Pay with card {x} please.", "My debit card number is {x}."],
        "iban": ["Transfer to IBAN {x}.", "Bank details: {x}."],
        "uk_nino": ["My National Insurance number is {x}.", "NI number: {x}", "Please quote NINO {x} on the form."],
        "ipv4": ["The router at {x} keeps dropping.", "Our VPN exits from {x}."],
        "ipv6": ["The address {x} is assigned to the print server."],
        "dob": ["Date of birth: {x}", "D.O.B. {x}", "She was born on {x}."],
        "neg": ["Your order {n8} will arrive on {date}.", "The train leaves platform {n1} at {time}.", "Prices start at £{price} including VAT.", "We're at {address}.", "Version {ver} fixes the login bug.", "Reference {n6}/{n2} has been closed.", "The match ended {n1}-{n1} after extra time."],
    },
    "de_DE": {
        "email": ["Bitte schreiben Sie an {x}.", "Meine E-Mail-Adresse lautet {x}.", "Die Rechnung geht an {x}."],
        "phone": ["Rufen Sie mich unter {x} an.", "Meine Telefonnummer ist {x}.", "Erreichbar unter {x}, werktags ab 9 Uhr."],
        "card": ["Bitte belasten Sie die Karte {x}.", "Kreditkartennummer: {x}"],
        "iban": ["Bitte überweisen Sie auf IBAN {x}.", "Unsere Bankverbindung: {x}", "Kontoverbindung {x} bei der Sparkasse."],
        "de_tax_id": ["Meine Steuer-ID lautet {x}.", "Steuerliche Identifikationsnummer: {x}", "IdNr {x} bitte im Formular eintragen."],
        "ipv4": ["Der Server {x} ist nicht erreichbar.", "Zugriff von {x} wurde blockiert."],
        "ipv6": ["Die Adresse {x} gehört zum Drucker."],
        "dob": ["Geburtsdatum: {x}", "Ich bin am {x} geboren.", "geb. {x}"],
        "neg": ["Bestellung {n8} wurde am {date} versandt.", "Der Preis beträgt {price} € inkl. MwSt.", "Wir sitzen in {address}.", "Version {ver} behebt den Fehler.", "Das Meeting ist in Raum {n3} um {time} Uhr.", "Aktenzeichen {n4}/{n2} ist abgeschlossen."],
    },
    "fr_FR": {
        "email": ["Écrivez-moi à {x}.", "Mon adresse e-mail est {x}.", "Envoyez la facture à {x}."],
        "phone": ["Appelez-moi au {x}.", "Mon numéro de portable est le {x}.", "Tél. : {x}"],
        "card": ["Débitez ma carte {x}.", "Numéro de carte bancaire : {x}"],
        "iban": ["Virement sur l'IBAN {x}.", "Mes coordonnées bancaires : {x}"],
        "fr_nir": ["Mon numéro de sécurité sociale est {x}.", "N° de sécurité sociale : {x}", "NIR {x}"],
        "ipv4": ["Le serveur {x} ne répond plus.", "Bloquez l'adresse {x} sur le pare-feu."],
        "ipv6": ["L'hôte a l'adresse {x}."],
        "dob": ["Date de naissance : {x}", "Je suis né le {x}.", "née le {x}"],
        "neg": ["Commande n° {n8} expédiée le {date}.", "Le prix est de {price} € TTC.", "Nous sommes au {address}.", "La version {ver} corrige le bug.", "Réunion salle {n3} à {time}.", "Dossier {n6}/{n2} clôturé."],
    },
    "es_ES": {
        "email": ["Escríbeme a {x}.", "Mi correo es {x}.", "Envía la factura a {x}."],
        "phone": ["Llámame al {x}.", "Mi móvil es el {x}.", "Teléfono de contacto: {x}"],
        "card": ["Cárgalo a la tarjeta {x}.", "Número de tarjeta: {x}"],
        "iban": ["Haz la transferencia al IBAN {x}.", "Cuenta bancaria: {x}"],
        "es_dni": ["Mi DNI es {x}.", "DNI/NIE: {x}", "Documento de identidad {x}.", "Mi NIE es {x}."],
        "ipv4": ["El servidor {x} no responde.", "Bloquea la IP {x}."],
        "ipv6": ["El equipo tiene la dirección {x}."],
        "dob": ["Fecha de nacimiento: {x}", "Nací el {x}."],
        "neg": ["Pedido {n8} enviado el {date}.", "El precio es {price} € con IVA.", "Estamos en {address}.", "La versión {ver} corrige el fallo.", "Reunión en la sala {n3} a las {time}.", "Expediente {n6}/{n2} cerrado."],
    },
    "it_IT": {
        "email": ["Scrivimi a {x}.", "La mia email è {x}.", "Invia la fattura a {x}."],
        "phone": ["Chiamami al {x}.", "Il mio cellulare è {x}.", "Telefono: {x}"],
        "card": ["Addebita sulla carta {x}.", "Numero della carta: {x}"],
        "iban": ["Bonifico sull'IBAN {x}.", "Coordinate bancarie: {x}"],
        "it_cf": ["Il mio codice fiscale è {x}.", "Codice fiscale: {x}", "CF {x}"],
        "ipv4": ["Il server {x} non risponde.", "Blocca l'indirizzo {x}."],
        "ipv6": ["L'host ha indirizzo {x}."],
        "dob": ["Data di nascita: {x}", "Sono nato il {x}."],
        "neg": ["Ordine {n8} spedito il {date}.", "Il prezzo è {price} € IVA inclusa.", "Siamo in {address}.", "La versione {ver} risolve il problema.", "Riunione in sala {n3} alle {time}.", "Pratica {n6}/{n2} chiusa."],
    },
    "nl_NL": {
        "email": ["Mail me op {x}.", "Mijn e-mailadres is {x}.", "Stuur de factuur naar {x}."],
        "phone": ["Bel me op {x}.", "Mijn mobiele nummer is {x}.", "Telefoon: {x}"],
        "card": ["Schrijf het af van kaart {x}.", "Kaartnummer: {x}"],
        "iban": ["Maak het over naar IBAN {x}.", "Rekeningnummer: {x}"],
        "nl_bsn": ["Mijn BSN is {x}.", "Burgerservicenummer: {x}", "BSN {x} staat op het formulier."],
        "ipv4": ["De server {x} reageert niet.", "Blokkeer het adres {x}."],
        "ipv6": ["De printer heeft adres {x}."],
        "dob": ["Geboortedatum: {x}", "Ik ben geboren op {x}."],
        "neg": ["Bestelling {n8} is verzonden op {date}.", "De prijs is € {price} incl. btw.", "We zitten op {address}.", "Versie {ver} lost de fout op.", "Vergadering in zaal {n3} om {time}.", "Dossier {n6}/{n2} is gesloten."],
    },
    "nl_BE": {
        "email": ["Mail naar {x}.", "Mijn e-mailadres is {x}."],
        "phone": ["Bel me op {x}.", "Telefoon: {x}"],
        "iban": ["Overschrijven naar {x}.", "Rekening {x}."],
        "be_nn": ["Mijn rijksregisternummer is {x}.", "Rijksregisternummer: {x}", "INSZ {x}"],
        "dob": ["Geboortedatum: {x}"],
        "neg": ["Bestelling {n8} is verzonden op {date}.", "De prijs is € {price} incl. btw.", "We zitten op {address}.", "Versie {ver} is uit."],
    },
}

MONTHS_EN = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]


def de_tax_id(rng):
    while True:
        digits = [rng.randint(1, 9)]
        pool = [d for d in range(10)]
        rng.shuffle(pool)
        body = digits + [d for d in pool if d != digits[0]][:8]
        # one digit appears twice: duplicate one of the first nine
        body.append(rng.choice(body))
        rng.shuffle(body)
        if body[0] == 0:
            continue
        product = 10
        for x in body:
            s = (x + product) % 10
            if s == 0:
                s = 10
            product = (s * 2) % 11
        check = (11 - product) % 10
        return "".join(map(str, body)) + str(check)


def uk_nino(rng):
    first = "ABCEGHJKLMNOPRSTWXYZ"
    second = "ABCEGHJKLMNPRSTWXYZ"
    while True:
        p = rng.choice(first) + rng.choice(second)
        if p not in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):
            break
    d = "".join(str(rng.randint(0, 9)) for _ in range(6))
    s = rng.choice("ABCD")
    if rng.random() < 0.5:
        return f"{p} {d[:2]} {d[2:4]} {d[4:]} {s}"
    return f"{p}{d}{s}"


def fmt_iban(v, rng):
    v = v.replace(" ", "")
    if rng.random() < 0.5:
        return " ".join(v[i:i + 4] for i in range(0, len(v), 4))
    return v


def fmt_card(v, rng):
    r = rng.random()
    if len(v) == 16 and r < 0.4:
        return " ".join(v[i:i + 4] for i in range(0, 16, 4))
    if len(v) == 16 and r < 0.6:
        return "-".join(v[i:i + 4] for i in range(0, 16, 4))
    return v


def fmt_dob(d, loc, rng):
    if loc == "en_US":
        return rng.choice([d.strftime("%m/%d/%Y"), f"{MONTHS_EN[d.month - 1]} {d.day}, {d.year}"])
    if loc == "en_GB":
        return rng.choice([d.strftime("%d/%m/%Y"), f"{d.day} {MONTHS_EN[d.month - 1]} {d.year}"])
    if loc in ("de_DE",):
        return d.strftime("%d.%m.%Y")
    if loc in ("nl_NL", "nl_BE"):
        return rng.choice([d.strftime("%d-%m-%Y"), d.strftime("%d.%m.%Y")])
    return d.strftime("%d/%m/%Y")


def value(kind, f, loc, rng):
    if kind == "email":
        return f.email()
    if kind == "phone":
        return f.phone_number()
    if kind == "card":
        return fmt_card(f.credit_card_number(), rng)
    if kind == "iban":
        return fmt_iban(f.iban(), rng)
    if kind == "ssn":
        return f.ssn()
    if kind == "uk_nino":
        return uk_nino(rng)
    if kind == "de_tax_id":
        v = de_tax_id(rng)
        return v if rng.random() < 0.6 else f"{v[:2]} {v[2:5]} {v[5:8]} {v[8:]}"
    if kind == "fr_nir":
        v = f.ssn()
        if rng.random() < 0.5:
            v = f"{v[0]} {v[1:3]} {v[3:5]} {v[5:7]} {v[7:10]} {v[10:13]} {v[13:]}"
        return v
    if kind == "es_dni":
        return f.nie() if rng.random() < 0.3 else f.nif()
    if kind == "it_cf":
        return f.ssn()
    if kind == "nl_bsn":
        return f.ssn()
    if kind == "be_nn":
        return f.ssn()
    if kind == "ipv4":
        return f.ipv4_public()
    if kind == "ipv6":
        return f.ipv6()
    if kind == "dob":
        return fmt_dob(f.date_of_birth(minimum_age=18, maximum_age=90), loc, rng)
    raise ValueError(kind)


def negative(tpl, f, loc, rng):
    def n(k):
        return "".join(str(rng.randint(0, 9)) for _ in range(k))
    return tpl.format(
        n1=rng.randint(1, 9), n2=n(2), n3=n(3), n4=n(4), n5=n(5), n6=n(6), n8=n(8), n12=n(12),
        date=f.date_between("-2y", "today").strftime("%d/%m/%Y" if loc != "en_US" else "%m/%d/%Y"),
        price=f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}" if loc.startswith("en") else f"{rng.randint(1, 999)},{rng.randint(0, 99):02d}",
        ver=f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 200)}",
        time=f"{rng.randint(7, 20)}:{rng.choice(['00', '15', '30', '45'])}",
        pct=rng.randint(1, 40),
        address=f.address().replace("\n", ", "),
    )


def fill(tpl, val):
    i = tpl.index("{x}")
    pre, post = tpl[:i], tpl[i + 3:]
    text = pre + val + post
    start = len(pre.encode())
    return text, start, start + len(val.encode())


def main():
    rng = random.Random(SEED)
    out = []
    for loc, kinds in T.items():
        f = Faker(loc)
        f.seed_instance(SEED + len(out))
        types = [k for k in kinds if k != "neg"]
        for _ in range(LINES_PER_LOCALE):
            if rng.random() < NEGATIVE_SHARE:
                text = negative(rng.choice(kinds["neg"]), f, loc, rng)
                out.append({"locale": loc, "text": text, "entities": []})
                continue
            # one or two entities per line
            ents, parts, offset = [], [], 0
            for k in rng.sample(types, 2 if rng.random() < 0.25 else 1):
                val = value(k, f, loc, rng)
                text, s, e = fill(rng.choice(kinds[k]), val)
                if parts:
                    parts.append(" ")
                    offset += 1
                ents.append({"type": k, "start": offset + s, "end": offset + e, "value": val})
                parts.append(text)
                offset += len(text.encode())
            out.append({"locale": loc, "text": "".join(parts), "entities": ents})
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "pii_faker.jsonl"), "w", encoding="utf-8") as fh:
        for r in out:
            b = r["text"].encode()
            for e in r["entities"]:
                assert b[e["start"]:e["end"]].decode() == e["value"], r
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} lines")


if __name__ == "__main__":
    main()
