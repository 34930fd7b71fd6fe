import pytest

from convrl.data.personas import PersonaError, load_persona, load_personas, personas_from_table, personas_table


def test_bundled_personas_roundtrip(personas):
    back = personas_from_table(personas_table(personas))
    assert [p.persona_id for p in back] == [p.persona_id for p in personas]
    assert back[0].traits == personas[0].traits


def test_system_prompt_adapts_tone(personas):
    coach = personas[0]
    assert coach.tone_for("sad") == "empathetic" and coach.tone_for("angry") == "calming"
    assert "be empathetic" in coach.system_prompt("sad")
    assert coach.name in coach.system_prompt()


def test_bad_cards(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("persona_id: x\nname: X\nemotion_map: {sad: gleeful}\n")
    with pytest.raises(PersonaError, match="gleeful"):
        load_persona(str(p))
    with pytest.raises(PersonaError, match="unknown persona"):
        load_persona("nobody")
    with pytest.raises(PersonaError, match="duplicate"):
        load_personas(["empathetic_coach", "empathetic_coach"])
