"""Templates in the meta dispatcher (issue 16): the operator's ``/template`` command (typed, or sent by the
picker page), checked against the catalogue and sent as a Graph ``type: template`` message; and the
catalogue kept current: syncs (install, bind, an unknown template approved) and the template webhooks."""

from __future__ import annotations

from zaptrix.kafka import Outcome, PermanentError, Received
from zaptrix.logging import get_logger
from zaptrix.template_command import CommandError, build, check_header_file, choose, parse, shape
from zaptrix.v1 import events_pb2, mapper_pb2

from meta_ingress.credentials import UnknownChannel
from meta_ingress.dispatcher.bitrix_files import BitrixFiles, PartFailed
from meta_ingress.dispatcher.context import Context, Target
from meta_ingress.dispatcher.notices import Notice, graph_error
from meta_ingress.dispatcher.send_plan import Part, base_payload, normalize_mime
from meta_ingress.graph.errors import (
    Action,
    GraphApiError,
    GraphTransportError,
    classify,
    describe,
    notice_for,
    retry_later,
)
from meta_ingress.metrics import TEMPLATE_SENDS, TEMPLATE_UPDATES, TOKEN_ERRORS
from meta_ingress.template_catalogue import CatalogueTooLarge, sync_channel

log = get_logger(__name__)
# Codes after which the catalogue is out of date (unknown, paused or disabled at Meta): read it again.
STALE_CATALOGUE = frozenset({132001, 132015, 132016})
# A status webhook's event as the template's status (research-2026-12.md 1.12): REINSTATED is approved again;
# FLAGGED warns of a coming pause or disable (the template can still be sent), so it changes no status.
STATUS_OF_EVENT = {"REINSTATED": "APPROVED", "FLAGGED": ""}


class Templates:
    def __init__(self, ctx: Context, files: BitrixFiles) -> None:
        self.ctx = ctx
        self.files = files

    # --- sending -----------------------------------------------------------------------------------

    async def send(
        self, rec: Received, target: Target, om: events_pb2.OperatorMessage, notice: Notice
    ) -> Outcome:
        """One ``/template`` command: refused with a notice before sending when it does not fit the
        catalogue, else sent once (the message's event id is the dedupe key, as for any reply)."""
        event_id = rec.envelope.event_id
        records, notify = self.ctx.records, self.ctx.notifier.send
        if not target.channel.active:
            await notify(notice, None, "Not delivered: this WhatsApp channel is switched off.")
            await records.mark(event_id, "failed:channel_inactive")
            return Outcome.ok()
        try:
            cmd = parse(om.text_bbcode)
            member, pnid = target.channel.member_id, target.phone_number_id
            rows = await records.templates(member, pnid, cmd.name)
            if not rows and not await records.templates(member, pnid, ""):  # never synced (a new binding)
                await self._sync_quietly(member, pnid, "first_use")
                rows = await records.templates(member, pnid, cmd.name)
            template = choose(rows, cmd, target.channel.template_language)
            header = await self._header(target, template, om)
            payload = base_payload(target.address, "template")
            payload["template"] = build(template, cmd, header)
        except CommandError as exc:
            return await self._refuse(event_id, notice, f"Template not sent: {exc}", "invalid")
        except PartFailed as exc:
            return await self._refuse(event_id, notice, f"Template not sent: {exc}", "invalid")
        if template.category == "MARKETING" and await records.marketing_stopped(
            target.phone_number_id, target.wa_id
        ):
            return await self._refuse(
                event_id,
                notice,
                f"Template not sent: “{template.name}” is a marketing template and this customer stopped "
                "marketing messages on WhatsApp. Use a utility template, or wait until the customer writes.",
                "opted_out",
            )
        try:
            wamid = await self.ctx.once.send(
                rec, target.phone_number_id, target.wa_id, event_id, target.creds.access_token, payload
            )
        except (GraphApiError, GraphTransportError) as exc:
            return await self._graph_refused(exc, rec, target, notice, template)
        await records.link_and_mark(target.conversation.id, notice, wamid, event_id, wamid)
        if (
            not om.bitrix_message_id
        ):  # sent from the picker: no message in the chat shows it, this notice does
            await notify(
                notice,
                None,
                f"Template “{template.name}” ({template.language}) was sent to the customer from the template "
                f"picker: {om.text_bbcode[:500]}",
                template_sent=True,
            )
        TEMPLATE_SENDS.labels("sent").inc()
        log.info(
            "template sent",
            event_id=event_id,
            template=template.name,
            language=template.language,
            wamid=wamid,
        )
        return Outcome.ok()

    async def _header(
        self, target: Target, template: mapper_pb2.MessageTemplate, om: events_pb2.OperatorMessage
    ) -> dict[str, str] | None:
        """The media header's reference (the message's first file, type-checked), or None."""
        media = shape(template).media
        if not media:
            if om.files:
                raise CommandError(
                    f"“{template.name}” has no media header: send the file as its own message."
                )
            return None
        if not om.files:
            return None  # build() says what is missing
        file = om.files[0]
        name = file.name or "file"
        mime = normalize_mime(file.mime_type, name)
        check_header_file(media, mime, name)
        part = Part(0, media, file=file, mime=mime, filename=name)
        ref = await self.files.media_ref(
            target.phone_number_id, part, target.creds.access_token, target.channel.member_id
        )
        if part.kind != media and media != "document":  # the real file turned out to be another type
            check_header_file(media, part.mime, name)
        return ref

    async def _refuse(self, event_id: str, notice: Notice, text: str, outcome: str) -> Outcome:
        TEMPLATE_SENDS.labels(outcome).inc()
        log.info("template command refused", event_id=event_id, outcome=outcome)
        await self.ctx.notifier.send(notice, None, text)
        await self.ctx.records.mark(event_id, f"failed:template_{outcome}")
        return Outcome.ok()

    async def _graph_refused(
        self,
        exc: GraphApiError | GraphTransportError,
        rec: Received,
        target: Target,
        notice: Notice,
        template: mapper_pb2.MessageTemplate,
    ) -> Outcome:
        if (later := retry_later(exc, "template send")) is not None:
            raise later from exc
        assert isinstance(exc, GraphApiError)
        if classify(exc) == Action.AUTH:
            TOKEN_ERRORS.labels(target.phone_number_id).inc()
            TEMPLATE_SENDS.labels("refused").inc()
            raise PermanentError(f"template send: {describe(exc)}")
        TEMPLATE_SENDS.labels("refused").inc()
        log.warning("template refused by the Graph API", template=template.name, error=describe(exc))
        await self.ctx.notifier.send(notice, graph_error(exc), notice_for(exc))
        await self.ctx.records.mark(rec.envelope.event_id, f"failed:{exc.label}")
        if exc.code in STALE_CATALOGUE:
            await self._sync_quietly(target.channel.member_id, target.phone_number_id, "stale")
        return Outcome.ok()

    # --- the catalogue -----------------------------------------------------------------------------

    async def sync(self, phone_number_id: str, reason: str) -> mapper_pb2.ReplaceTemplatesResponse:
        try:
            creds = await self.ctx.credentials.get(phone_number_id)
        except UnknownChannel as exc:
            raise PermanentError(str(exc)) from None
        if not creds.waba_id:
            raise PermanentError(f"channel {phone_number_id} has no WhatsApp Business account id (waba_id)")
        try:
            answer = await sync_channel(
                self.ctx.records.clients.mapper,
                self.ctx.graph,
                phone_number_id,
                creds.waba_id,
                creds.access_token,
                self.ctx.records.clients.timeout,
            )
        except (GraphApiError, GraphTransportError) as exc:
            if (later := retry_later(exc, "template sync")) is not None:
                raise later from exc
            TEMPLATE_UPDATES.labels("sync", "failed").inc()
            raise PermanentError(f"template sync: {describe(exc)}") from exc
        except CatalogueTooLarge as exc:
            raise PermanentError(str(exc)) from None
        TEMPLATE_UPDATES.labels("sync", "synced").inc()
        log.info(
            "template catalogue synced",
            phone_number_id=phone_number_id,
            reason=reason,
            stored=answer.stored,
            removed=answer.removed,
        )
        return answer

    async def _sync_quietly(self, member_id: str, phone_number_id: str, reason: str) -> None:
        try:
            await self.sync(phone_number_id, reason)
        except Exception as exc:  # the send's outcome is decided; a failed refresh only waits for the next
            log.warning("template catalogue refresh failed", phone_number_id=phone_number_id, error=str(exc))

    async def on_sync_request(self, req: events_pb2.TemplateSyncRequest) -> Outcome:
        try:
            channel = await self.ctx.records.channel(req.phone_number_id)
        except Exception as exc:
            raise PermanentError(f"template sync for an unbound channel: {exc}") from None
        if req.member_id and channel.member_id != req.member_id:
            self.ctx.refuse("template sync", req.member_id, req.phone_number_id, "is bound to another portal")
        await self.sync(req.phone_number_id, req.reason or "request")
        return Outcome.ok()

    async def on_update(self, rec: Received) -> Outcome:
        """A template webhook: status, quality or category, applied to every channel of the WABA."""
        env = rec.envelope
        kind = rec.event_type
        update = mapper_pb2.TemplateUpdate()
        if kind == "template_status_update":
            e = env.template_status_update
            status = STATUS_OF_EVENT.get(e.event, e.event)
            update = mapper_pb2.TemplateUpdate(waba_id=e.waba_id, template_id=e.template_id, status=status)
            label, approved = "status", status == "APPROVED"
            if e.category:
                update.category = e.category
        elif kind == "template_quality_update":
            q = env.template_quality_update
            update = mapper_pb2.TemplateUpdate(
                waba_id=q.waba_id, template_id=q.template_id, quality=q.new_quality
            )
            label, approved = "quality", False
        else:
            c = env.template_category_update
            if not c.new_category:  # the advance notice: nothing changes yet
                TEMPLATE_UPDATES.labels("category", "notice").inc()
                log.info(
                    "template category will change", template=c.name, correct_category=c.correct_category
                )
                return Outcome.ok()
            update = mapper_pb2.TemplateUpdate(
                waba_id=c.waba_id, template_id=c.template_id, category=c.new_category
            )
            label, approved = "category", False
        update.at.CopyFrom(env.occurred_at)
        answer = await self.ctx.records.apply_template_update(update)
        if answer.updated:
            TEMPLATE_UPDATES.labels(label, "applied").inc()
        elif approved and answer.phone_number_ids:  # a new template approved: read the catalogues again
            TEMPLATE_UPDATES.labels(label, "unknown_template").inc()
            for pnid in answer.phone_number_ids:
                await self.sync(pnid, "webhook")
        else:
            TEMPLATE_UPDATES.labels(label, "stale").inc()
        log.info("template webhook applied", event_id=env.event_id, updated=answer.updated)
        return Outcome.ok()
