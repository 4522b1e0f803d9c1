"""Configuration check: load env + profile the way the service does and report every problem at once.

`check_configuration(**settings_kwargs)` builds `Settings` exactly as start-up does (keyword arguments,
nested env, flat env and `.env`, the profile YAML) and returns a `ConfigReport`: the settings (None
when there is an error) and every `ConfigProblem` found, errors first. A wrong value does not hide the
next one: each field pydantic rejects is reported, replaced by its default and the build tried again,
so one run names every culprit. `llm-service config check` prints the report, `llm-service serve` runs
the same check before it starts, and `effective_configuration()` is what `llm-service config show`
prints (every secret masked).

Each problem names its culprit as the operator wrote it:

- an env var by the name that supplied the value: the nested `LLM_OPENAI__TIMEOUT_READ` when it is
  set (it wins), else the flat `OPENAI_TIMEOUT_READ` (from the environment or `.env`);
- a profile value by file, line, column and YAML path: `config/prod.yaml:12:19: aliases.fast[1].provider`;
- a keyword argument as `argument openai.timeout_read`.

Severity. **Errors** stop start-up (`serve` exits 2 without starting) and make `config check` exit 1:
a value of the wrong type or out of range; a profile that is missing (other than `default`),
malformed (the line and column are given) or not a mapping; an unknown top-level key, an unknown
provider under `providers:`, an unknown field of a provider or settings group, an unknown field of
a deployment; an alias with no deployments or not a list; a deployment naming an unknown provider;
an enabled GenAI Platform with fields missing (the names `validate_genai_config()` reports); Azure
credentials that contradict themselves (`AZURE_OPENAI_AUTH=api_key` with no key; a client secret
without its tenant and client id). Each of these is a configuration that cannot mean what its author
meant.

**Warnings** are printed by `config check` (exit 0, or 1 with `--strict`) and logged at start-up,
which goes on: a deployment whose provider has no credentials or endpoint (or whose `api_key_env` is
not set), demo mode off with nothing configured, a secret written into the profile YAML, a
duplicate YAML key, a settings group under `providers:`, an unknown `LLM_*` / `REMOTE_LLM_*` /
`GENAI_PLATFORM_*` env var, a credentials file that does not exist, a config folder that does not
exist. An unconfigured deployment is the normal state of the shipped default profile on a machine
with a few keys (or none: demo mode), and the service already answers such an alias with a 404
that names the provider, so it must not stop start-up. In demo mode the fixtures serve every
provider, so no deployment is reported unconfigured.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsError
from typing_extensions import override

from llm_service.core.config.constants import ProviderID
from llm_service.core.config.profile_tree import Loc, ProfileTree, Where, dotted
from llm_service.core.config.settings import (
    PROFILE_KEYS,
    PROFILE_SETTINGS,
    Deployment,
    ProfileYamlSource,
    Settings,
    SettingsGroup,
    read_environment,
)
from llm_service.core.llm.genai_platform import validate_genai_config
from llm_service.core.llm.models import ConfigurationError

Severity = Literal["error", "warning"]

#: Env prefixes only this service uses: an unknown name under them is most likely a typo.
OWN_ENV_PREFIXES = ("LLM_", "REMOTE_LLM_", "GENAI_PLATFORM_")
#: What makes a provider usable, and the other ways to get there (said in the warning).
_REACH: Mapping[ProviderID, tuple[str, str]] = {
    ProviderID.OPENAI: ("api_key", "or give the deployment an api_key_env"),
    ProviderID.OPENROUTER: ("api_key", "or give the deployment an api_key_env"),
    ProviderID.REMOTE: ("base_url", "or give the deployment a base_url"),
    ProviderID.AZURE_OPENAI: ("base_url", "or give the deployment a base_url, or enable the GenAI Platform"),
    ProviderID.VERTEX_AI: ("project", ""),
}
_MASK = "**********"
_MAX_PASSES = 5


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem: how bad, its culprit (env var, YAML path or argument) and what is wrong."""

    severity: Severity
    culprit: str
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None

    @property
    def where(self) -> str:
        """`OPENAI_TIMEOUT_READ`, or `config/prod.yaml:12:19: aliases.fast[1].provider`."""
        if self.file is None:
            return self.culprit
        position = self.file
        if self.line is not None:
            position += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        return f"{position}: {self.culprit}" if self.culprit else position

    @override
    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """The outcome of a check: the settings (None when there is an error) and every problem."""

    settings: Settings | None
    problems: tuple[ConfigProblem, ...]
    profile: str
    profile_file: str
    profile_loaded: bool

    @property
    def errors(self) -> list[ConfigProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[ConfigProblem]:
        return [p for p in self.problems if p.severity == "warning"]


def check_configuration(**settings_kwargs: Any) -> ConfigReport:
    """Load env + profile (+ `settings_kwargs`, as `Settings(**settings_kwargs)` would) and check it all."""
    return _Checker(settings_kwargs).run()


def effective_configuration(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret masked: SecretStr values and URL passwords."""
    data: dict[str, Any] = _mask_urls(settings.model_dump(mode="json"))  # a SecretStr dumps as **********
    return data


# --------------------------------------------------------------------------------------------------
# Settings introspection
# --------------------------------------------------------------------------------------------------


def _group(name: str) -> type[SettingsGroup] | None:
    """The settings group class of the Settings field `name` (None: not a group)."""
    info = Settings.model_fields.get(name)
    annotation = info.annotation if info else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, SettingsGroup) else None


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model whose fields sit at `loc` of the Settings input: Settings, a group or a deployment."""
    if not loc:
        return Settings
    if loc[0] == "aliases":
        return Deployment if len(loc) == 3 else None
    return _group(str(loc[0])) if len(loc) == 1 else None


def _is_secret(info: FieldInfo | None) -> bool:
    annotation = info.annotation if info else None
    return annotation is SecretStr or SecretStr in get_args(annotation)


def _default(info: FieldInfo) -> Any:
    value = info.get_default(call_default_factory=True)
    return None if value is PydanticUndefined else value


def _hint(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(choices)})"


def _known_env_names() -> set[str]:
    """Every env var `Settings` reads: flat names, nested `LLM_<GROUP>__<FIELD>`, `LLM_<FIELD>`."""
    names: set[str] = set()
    for name in Settings.model_fields:
        names.add(f"LLM_{name.upper()}")
        group = _group(name)
        if group is not None:
            for field in group.model_fields:
                names.update({group.env_name(field), f"LLM_{name}__{field}".upper()})
    return names


def _has_path(value: Any, path: Loc) -> bool:
    for part in path:
        in_mapping = isinstance(value, Mapping) and part in value
        in_list = isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)
        if not (in_mapping or in_list):
            return False
        value = value[part]
    return True


def _deep_merge(base: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in updates.items():
        current = merged.get(key)
        if isinstance(current, BaseModel):
            current = current.model_dump()
        merged[key] = _deep_merge(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
    return merged


def _mask_urls(value: Any) -> Any:
    """`https://user:pass@host` -> `https://user:**********@host`, anywhere in the data."""
    if isinstance(value, dict):
        return {k: _mask_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_urls(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        try:
            parts = urlsplit(value)
            if parts.password:
                host = parts.hostname or ""
                netloc = f"{parts.username or ''}:{_MASK}@{f'[{host}]' if ':' in host else host}"
                netloc += f":{parts.port}" if parts.port else ""
                return urlunsplit(parts._replace(netloc=netloc))
        except ValueError:
            return _MASK
    return value


def _display(path: Path) -> str:
    """A path relative to the working directory when it is below it (`config/prod.yaml`)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (OSError, ValueError):
        return str(path)


class _WithoutProfile(Settings):
    """Settings without the profile source: what env and arguments say when the profile is unusable."""

    @override
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = super().settings_customise_sources(
            settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        )
        return tuple(s for s in sources if not isinstance(s, ProfileYamlSource))


# --------------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------------


class _Checker:
    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.env = read_environment()
        self.env_folded = {name.upper(): name for name in self.env}  # nested LLM_ names ignore case
        source = ProfileYamlSource(Settings, kwargs)
        self.profile_name, self.profile_path = source.profile, source.path
        self.display = _display(source.path)
        self.profile: ProfileTree | None = None
        self.profile_usable = True
        self.problems: list[ConfigProblem] = []
        self.seen: set[tuple[str, str | None, str]] = set()
        self.dropped_aliases: set[str] = set()

    def run(self) -> ConfigReport:
        self.load_profile()
        if self.profile is not None:
            self.check_profile(self.profile)
        settings = self.build()
        if settings is not None:
            self.check_settings(settings)
        self.check_env(settings)
        # Errors first; in each, env and arguments before the profile, the profile in line order.
        problems = tuple(sorted(self.problems, key=lambda p: (p.severity != "error", p.file or "", p.line or 0)))
        failed = any(p.severity == "error" for p in problems)
        return ConfigReport(
            settings=None if failed else settings,
            problems=problems,
            profile=self.profile_name,
            profile_file=self.display,
            profile_loaded=self.profile is not None,
        )

    def add(self, severity: Severity, where: Where, message: str) -> None:
        key = (severity, where.file, where.culprit)
        if key not in self.seen:  # one problem per culprit: pydantic and our own check may both see it
            self.seen.add(key)
            self.problems.append(ConfigProblem(severity, where.culprit, message, where.file, where.line, where.column))

    # -- where a value came from -------------------------------------------------------------------

    def where_setting(self, loc: Loc) -> Where:
        """The culprit of the value at `loc`: the strongest source that supplied it."""
        if _has_path(self.kwargs, loc):
            return Where(f"argument {dotted(loc)}")
        name = self.env_source(loc)
        if name is not None:
            return Where(name)
        if self.profile is not None and self.profile_usable:
            top = loc[0] if loc else ""
            if top in PROFILE_SETTINGS | {"aliases"} and self.profile.has((top,)):
                return self.profile.where(loc)
            if self.profile.has(("providers", top)):
                return self.profile.where(("providers", *loc))
        return Where(dotted(loc))

    def env_source(self, loc: Loc) -> str | None:
        """The env var that supplied `loc`, in the sources' order: nested, whole-group JSON, flat."""
        if not loc:
            return None
        top = str(loc[0])
        group = _group(top)
        if group is None or len(loc) < 2:
            return self.env_folded.get(f"LLM_{top}".upper())
        field = str(loc[1])
        nested = self.env_folded.get(f"LLM_{top}__{field}".upper())
        whole = self.env_folded.get(f"LLM_{top}".upper())
        if nested is None and whole is not None and not _json_has(self.env[whole], field):
            whole = None
        flat = group.env_name(field) if group.env_name(field) in self.env else None
        return nested or whole or flat

    # -- the profile file --------------------------------------------------------------------------

    def load_profile(self) -> None:
        path = self.profile_path
        if not path.is_file():
            self.profile_usable = self.profile_name == "default"
            if not self.profile_usable:
                self.profile_missing()
            elif not path.parent.is_dir():
                where = self.where_profile_setting("config_dir")
                self.add("warning", where, f"the config folder {path.parent} does not exist (no profile is read)")
            return
        try:
            text = path.read_text(encoding="utf-8")
            data = yaml.safe_load(text)
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            self.profile_broken(exc)
            return
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            self.profile_usable = False
            self.add("error", Where("", self.display), f"cannot read the profile: {exc}")
            return
        if data is not None and not isinstance(data, dict):
            self.profile_usable = False
            self.add("error", Where("", self.display, 1, 1), f"the top level must be a mapping, not a {_kind(data)}")
            return
        self.profile = ProfileTree(self.display, data or {}, root)

    def where_profile_setting(self, field: str) -> Where:
        if field in self.kwargs:
            return Where(f"argument {field}")
        name = f"LLM_{field.upper()}"
        return Where(self.env_folded.get(name, name))

    def profile_missing(self) -> None:
        folder = self.profile_path.parent
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        present = f"profiles there: {', '.join(known)}" if known else f"{_display(folder)} holds no profile"
        self.add(
            "error",
            self.where_profile_setting("config_profile"),
            f"profile {self.profile_name!r} not found: {self.display} does not exist ({present})",
        )

    def profile_broken(self, exc: yaml.MarkedYAMLError) -> None:
        self.profile_usable = False
        mark, opened = exc.problem_mark or exc.context_mark, exc.context_mark
        what = str(exc.problem or exc.context or exc)
        if exc.context and exc.problem:
            at = f" (from line {opened.line + 1}, column {opened.column + 1})" if opened else ""
            what = f"{exc.context}{at}: {exc.problem}"
        where = Where("", self.display, mark.line + 1, mark.column + 1) if mark else Where("", self.display)
        self.add("error", where, f"malformed YAML: {what}")

    def check_profile(self, profile: ProfileTree) -> None:
        for key in profile.data:
            if key not in PROFILE_KEYS:
                hint = _hint(str(key), sorted(PROFILE_KEYS))
                self.add("error", profile.where((key,), key=True), f"unknown top-level key {key!r}{hint}")
            elif (group := _group(str(key))) is not None:
                self.check_fields(profile, (key,), group, profile.data[key])
        self.check_providers(profile, profile.data.get("providers"))
        self.check_aliases(profile, profile.data.get("aliases"))
        for path, first_line in profile.duplicates():
            message = f"duplicate key {path[-1]!r} (first at line {first_line}): the last one wins"
            self.add("warning", profile.where(path, key=True), message)

    def check_providers(self, profile: ProfileTree, providers: Any) -> None:
        if providers is None:
            return
        if not isinstance(providers, dict):
            message = f"must be a mapping of provider -> its settings, not a {_kind(providers)}"
            self.add("error", profile.where(("providers",)), message)
            self.profile_usable = False  # the YAML source cannot read it
            return
        known = [p.value for p in ProviderID]
        for name, overrides in providers.items():
            group = _group(str(name)) if name in known else None
            where = profile.where(("providers", name), key=True)
            if group is not None:
                self.check_fields(profile, ("providers", name), group, overrides)
            elif name in PROFILE_SETTINGS:
                self.add("warning", where, f"{name!r} is not a provider: write it at the top level of the profile")
            else:
                self.add("error", where, f"unknown provider {name!r}{_hint(str(name), known)}")

    def check_fields(self, profile: ProfileTree, path: Loc, group: type[SettingsGroup], overrides: Any) -> None:
        """Fields of a settings group in the profile: unknown ones (ignored otherwise), secrets."""
        if not isinstance(overrides, dict):
            return  # pydantic reports the type
        for field, value in overrides.items():
            info = group.model_fields.get(str(field))
            where = profile.where((*path, field), key=True)
            if info is None:
                hint = _hint(str(field), list(group.model_fields))
                self.add("error", where, f"unknown field {field!r} of {path[-1]}{hint}")
            elif _is_secret(info) and value:
                message = f"a secret in the profile: set {group.env_name(str(field))} in the environment instead"
                self.add("warning", where, message)

    def check_aliases(self, profile: ProfileTree, aliases: Any) -> None:
        if aliases is None:
            return
        if not isinstance(aliases, dict):
            message = f"must be a mapping of alias -> list of deployments, not a {_kind(aliases)}"
            self.add("error", profile.where(("aliases",)), message)
            return
        for alias, deployments in aliases.items():
            where = profile.where(("aliases", alias), key=True)
            if deployments is None or deployments == []:
                self.add("error", where, f"alias {alias!r} has no deployments")
            elif not isinstance(deployments, list):
                message = f"alias {alias!r} must be a list of deployments (`- provider: …`), not a {_kind(deployments)}"
                self.add("error", where, message)

    # -- building the settings ---------------------------------------------------------------------

    def build(self) -> Settings | None:
        """Settings as start-up builds them; each rejected value is reported, defaulted, built again."""
        cls: type[Settings] = Settings if self.profile_usable else _WithoutProfile
        overrides: dict[str, Any] = {}
        platform_error: ConfigurationError | None = None
        for _ in range(_MAX_PASSES):
            try:
                settings = cls(**_deep_merge(self.kwargs, overrides))
            except ValidationError as exc:
                if not self.record_validation(exc.errors(), overrides):
                    return None
            except ConfigurationError as exc:  # the GenAI Platform's check; taken again below
                if platform_error is not None:
                    self.add("error", Where("settings"), exc.message)
                    return None
                platform_error = exc
                overrides.setdefault("genai_platform", {})["enabled"] = False
            except SettingsError as exc:  # an env value that should be JSON is not
                self.add("error", Where(_settings_error_culprit(str(exc))), str(exc))
                return None
            except (ValueError, TypeError, OSError, yaml.YAMLError) as exc:  # the profile source gave up
                if cls is _WithoutProfile:
                    self.add("error", Where("settings"), str(exc))
                    return None
                self.add("error", Where("", self.display), str(exc))
                cls = _WithoutProfile
            else:
                return settings if platform_error is None else self.platform_enabled(settings, platform_error)
        return None

    def record_validation(self, errors: list[ErrorDetails], overrides: dict[str, Any]) -> bool:
        progressed = False
        for error in errors:
            loc = tuple(error["loc"])
            self.add("error", self.where_setting(loc), _describe(error, loc))
            progressed = self.neutralize(loc, overrides) or progressed
        return progressed

    def neutralize(self, loc: Loc, overrides: dict[str, Any]) -> bool:
        """Replace the value at `loc` by its default (an alias by no deployments); False: nothing left to do."""
        top = str(loc[0]) if loc else ""
        group = _group(top)
        if top == "aliases" and len(loc) >= 2:
            aliases = overrides.setdefault("aliases", {})
            if str(loc[1]) in aliases:
                return False
            aliases[str(loc[1])] = []
            self.dropped_aliases.add(str(loc[1]))
            return True
        if group is not None and len(loc) >= 2 and str(loc[1]) in group.model_fields:
            target = overrides.setdefault(top, {})
            if not isinstance(target, dict) or str(loc[1]) in target:
                return False
            target[str(loc[1])] = _default(group.model_fields[str(loc[1])])
            return True
        if top not in Settings.model_fields or top in overrides:
            return False
        overrides[top] = {} if group is not None else _default(Settings.model_fields[top])
        return True

    def platform_enabled(self, settings: Settings, error: ConfigurationError) -> Settings:
        """Put back the enabled GenAI Platform that was switched off to build, and name what it misses."""
        platform = settings.genai_platform.model_copy(update={"enabled": True})
        try:
            validate_genai_config(platform)
        except ConfigurationError as exc:
            self.add("error", self.where_setting(("genai_platform", "enabled")), exc.message)
        else:
            self.add("error", Where("settings"), error.message)
        return settings.model_copy(update={"genai_platform": platform})

    # -- what the settings mean --------------------------------------------------------------------

    def check_settings(self, settings: Settings) -> None:
        demo = settings.demo_enabled()
        for alias, deployments in settings.aliases.items():
            if alias in self.dropped_aliases:
                continue
            if not deployments:
                self.add("error", self.where_setting(("aliases", alias)), f"alias {alias!r} has no deployments")
            elif not demo:
                self.check_deployments(settings, alias, deployments)
        if demo:
            return
        if settings.demo_mode == "off" and not settings.configured_providers():
            message = "demo mode is off and no provider is configured: only deployments with their own reach serve"
            self.add("warning", self.where_setting(("demo_mode",)), message)
        self.check_azure(settings)
        self.check_files(settings)

    def check_deployments(self, settings: Settings, alias: str, deployments: list[Deployment]) -> None:
        for index, deployment in enumerate(deployments):
            reason = _unreachable(settings, deployment)
            if reason is not None:
                message = f"{deployment.provider.value}/{deployment.model} of alias {alias!r} cannot serve: {reason}"
                self.add("warning", self.where_setting(("aliases", alias, index)), message)

    def check_azure(self, settings: Settings) -> None:
        azure = settings.azure_openai
        provider = ProviderID.AZURE_OPENAI
        if provider not in settings.configured_providers() or settings.genai_platform.fronts(provider):
            return
        if azure.auth == "api_key" and not _secret_set(azure.api_key):
            message = f"is api_key but {azure.env_name('api_key')} is not set"
            self.add("error", self.where_setting(("azure_openai", "auth")), message)
        missing = [azure.env_name(f) for f in ("tenant_id", "client_id") if not getattr(azure, f)]
        if _secret_set(azure.client_secret) and not azure.uses_api_key() and missing:
            message = f"a client secret needs {' and '.join(missing)} too (unset it to use managed identity)"
            self.add("error", self.where_setting(("azure_openai", "client_secret")), message)

    def check_files(self, settings: Settings) -> None:
        used = settings.configured_providers()
        files = (
            (ProviderID.VERTEX_AI, ("vertex_ai", "credentials_file"), settings.vertex_ai.credentials_file),
            (ProviderID.AZURE_OPENAI, ("azure_openai", "authority_ca_file"), settings.azure_openai.authority_ca_file),
        )
        for provider, loc, value in files:
            if provider in used and value and not Path(value).is_file():
                self.add("warning", self.where_setting(loc), f"file {value} does not exist")

    def check_env(self, settings: Settings | None) -> None:
        known = _known_env_names() | self.deployment_key_names(settings)
        for name in sorted(self.env):
            if name.startswith(OWN_ENV_PREFIXES) and name not in known:
                choices = sorted(n for n in known if n.startswith(name.split("_", 1)[0]))
                self.add("warning", Where(name), f"unknown setting, ignored{_hint(name, choices)}")

    def deployment_key_names(self, settings: Settings | None) -> set[str]:
        """The env vars deployments name as `api_key_env` (from the settings, else the raw profile)."""
        if settings is not None:
            return {d.api_key_env for ds in settings.aliases.values() for d in ds if d.api_key_env}
        aliases = self.profile.data.get("aliases") if self.profile else None
        if not isinstance(aliases, dict):
            return set()
        return {
            str(d["api_key_env"])
            for ds in aliases.values()
            if isinstance(ds, list)
            for d in ds
            if isinstance(d, dict) and d.get("api_key_env")
        }


def _unreachable(settings: Settings, deployment: Deployment) -> str | None:
    """Why `deployment` cannot be served (None: it can), naming what to set."""
    if deployment.api_key_env and settings.deployment_key(deployment.api_key_env) is None:
        return f"its api_key_env {deployment.api_key_env} is not set"
    if settings.deployment_configured(deployment):
        return None
    group = settings.provider_settings(deployment.provider)
    field, alternative = _REACH.get(deployment.provider, ("api_key", ""))
    name = group.env_name(field) if group is not None else field
    return f"provider {deployment.provider.value} is not configured: set {name}" + (
        f" ({alternative})" if alternative else ""
    )


def _describe(error: ErrorDetails, loc: Loc) -> str:
    """Pydantic's message, said for a config file: unknown names get a suggestion, safe inputs shown."""
    kind, field, value = error["type"], str(loc[-1]) if loc else "", error.get("input")
    model = _model_at(loc[:-1])
    if kind == "extra_forbidden":
        known = list(model.model_fields) if model is not None else []
        return f"unknown field {field!r}" + (_hint(field, known) if known else "")
    if kind == "enum" and field == "provider":
        return f"unknown provider {value!r}{_hint(str(value), [p.value for p in ProviderID])}"
    if kind == "missing":
        return f"{field!r} is required"
    message = str(error["msg"])
    info = model.model_fields.get(field) if model is not None else None
    if info is not None and not _is_secret(info) and isinstance(value, str | int | float | bool):
        message += f" (got {value!r})"
    return message


def _secret_set(value: SecretStr | None) -> bool:
    return value is not None and bool(value.get_secret_value())


def _kind(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _json_has(text: str, field: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return True  # unparsable: its own error names it
    return isinstance(value, dict) and field in value


def _settings_error_culprit(message: str) -> str:
    """`error parsing value for field "openai" from source ...` -> LLM_OPENAI."""
    found = re.search(r'field "([^"]+)"', message)
    return f"LLM_{found.group(1).upper()}" if found else "environment"
